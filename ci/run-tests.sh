#!/usr/bin/env bash
# Run the test suite in the venv.  pytest's exit code 5 ("no tests collected")
# is a failure here: a run that tested nothing must not look green.
#
# With arguments: one pytest run with them.  Without (`make test`, CI), three
# stages, so the two cores are used while the machine-wide tests wait on
# namespaces, servers and signals:
#   1. tests/faults alone: it asserts that nothing of the project is left on the
#      machine after each point, so nothing else may run meanwhile;
#   2. the other machine-wide tests (topologies, `chainbench down`, servers) and,
#      at the same time, the modules marked test_run_only (BPF_PROG_TEST_RUN on
#      bytes: nothing a topology or `down` touches); their output follows.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

pytest_rc() {   # pytest's exit code, with 5 (nothing collected) made a failure
  local rc=$1
  if [[ $rc -eq 5 ]]; then
    echo "run-tests: pytest collected no tests" >&2
    return 1
  fi
  return "$rc"
}

if [[ $# -gt 0 ]]; then
  $PY -m pytest "$@"
  pytest_rc $?
  exit $?
fi

$PY -m pytest -q tests/faults
pytest_rc $?; faults=$?

side_log=$(mktemp /tmp/cb-run-tests-XXXXXX.log)
$PY -m pytest -q -m test_run_only >"$side_log" 2>&1 &
side=$!
trap 'kill -TERM $side 2>/dev/null; wait $side; rm -f "$side_log"; exit 130' INT
trap 'kill -TERM $side 2>/dev/null; wait $side; rm -f "$side_log"; exit 143' TERM
$PY -m pytest -q -m "not test_run_only" --ignore=tests/faults
pytest_rc $?; machine=$?
wait $side
pytest_rc $?; testrun=$?
trap - INT TERM
echo "---- test_run_only modules (run beside the machine-wide tests) ----"
cat "$side_log"
rm -f "$side_log"
echo "run-tests: faults exit $faults, machine-wide exit $machine, test_run_only exit $testrun"
(( faults == 0 && machine == 0 && testrun == 0 ))
