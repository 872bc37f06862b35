"""Service load balancing in the harness: the load balancer's desired state,
Maglev lookup tables and the flow hash that indexes them, and the code that
programs them into a loaded datapath's maps."""
