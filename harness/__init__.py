"""chainbench: a chained eBPF datapath and its benchmark harness.

Importing it keeps numpy's BLAS library from starting worker threads (chainbench
uses numpy for arrays, never for linear algebra).  A thread is more than waste
here: a signal sent to the process may be delivered to any thread that does not
block it, and the CLI blocks SIGINT and SIGTERM in its main thread once a command
is over, so that a signal arriving while Python shuts down cannot turn a finished
command's exit code into a signal death.  A BLAS thread, started unblocked,
would take that signal and die of it.
"""
import os as _os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
