"""The project's one error base and the exit codes it carries.

Every error the ``chainbench`` command reports derives from :class:`ChainbenchError`;
the CLI catches that one class, prints its message as one line (``ERROR: ...``, no
traceback) and exits with its ``exit_code``:

* :class:`InputError` (exit 2): bad input, a file, field, flag or name the user gave;
  the message names it.
* any other ``ChainbenchError`` (exit 1): the thing run failed (a kernel refusal, a
  failed programming, a benchmark that could not measure).

A project error keeps its other bases (``ValueError``, ``LookupError``, ``RuntimeError``,
``AssertionError``...) so ``except`` clauses written for them still catch it.  The libbpf
binding (harness.bpf) stays generic: its errors do not derive from this base.
"""
from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class ChainbenchError(Exception):
    """An error the CLI reports in one line, exiting with :attr:`exit_code`."""

    exit_code: int = EXIT_FAIL


class InputError(ChainbenchError):
    """Bad input from the user (a file, field, flag or name): exit 2."""

    exit_code = EXIT_USAGE


class UsageError(InputError):
    """A command line that asks for something that cannot be done (a flag's value, a
    combination of flags, a missing prerequisite such as ``make build``)."""
