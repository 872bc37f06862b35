"""Scripts run by make and CI; kernel_matrix/ is the Python package of the
kernel compatibility matrix (a regular package, so ``ci.kernel_matrix``
imports from the repository root whatever else is installed)."""
