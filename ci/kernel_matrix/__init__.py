"""The kernel matrix: boot Debian kernels under qemu and check that
chainbench's BPF objects load, pass the verifier and behave on each.

Run it with run.sh (``python -m ci.kernel_matrix``, see cli.py).  One module
per step, each saying in its docstring what it owns; README.md here maps them
and describes a run.  guest.py is the part that runs inside the guest.
"""
