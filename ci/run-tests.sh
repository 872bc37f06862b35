#!/usr/bin/env bash
# Run the test suite in the venv.  pytest's exit code 5 ("no tests collected")
# is a failure here: a run that tested nothing must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "run-tests: pytest collected no tests" >&2
  exit 1
fi
exit $rc
