"""The host facilities underneath everything: network namespaces, cgroups, the BPF
filesystem, processes the project starts, signals, facts about the machine."""
