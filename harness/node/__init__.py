"""What a node holds: its pinned datapath maps and programs, settings, endpoint
registry, sync with the cluster's objects, readers of its maps, and the chained
CNI plugin that attaches its pods."""
