#!/usr/bin/env bash
# Run the test suite in the venv.  pytest's exit code 5 ("no tests collected")
# is a failure here: a run that tested nothing must not look green.
#
# With arguments: one pytest run with them.  Without (`make test`, CI), two
# stages, with the modules marked test_run_only (BPF_PROG_TEST_RUN on bytes:
# nothing a topology or `down` touches) run on the other core all along:
#   1. tests/faults: it asserts that nothing of the project is left on the
#      machine after each point, so no other machine-wide test may run meanwhile;
#      beside it, only the test_run_only modules also marked beside_faults (no
#      process, temporary directory, pin or record the fault suite looks for:
#      pyproject.toml's marker text);
#   2. the other machine-wide tests (topologies, `chainbench down`, servers) and,
#      once the first side run is done, the other test_run_only modules.
# The side runs' output follows the machine-wide tests'.
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

work=$(mktemp -d /tmp/run-tests-XXXXXX)
faults_done=$work/faults-done

# The side lane: the modules safe beside the fault suite, then (not before the fault
# suite is over) the rest; each run's exit code in $work/<name>.rc.
side_lane() {
  local child=
  trap '[[ -n $child ]] && kill -TERM $child 2>/dev/null; wait; exit 143' TERM
  $PY -m pytest -q -m "test_run_only and beside_faults" >"$work/beside.log" 2>&1 &
  child=$!; wait $child; echo $? >"$work/beside.rc"
  while [[ ! -e $faults_done ]]; do sleep 1; done
  $PY -m pytest -q -m "test_run_only and not beside_faults" >"$work/after.log" 2>&1 &
  child=$!; wait $child; echo $? >"$work/after.rc"
}
side_lane &
side=$!
stop() { kill -TERM $side 2>/dev/null; wait $side; rm -rf "$work"; exit "$1"; }
trap 'stop 130' INT
trap 'stop 143' TERM

$PY -m pytest -q tests/faults
pytest_rc $?; faults=$?
touch "$faults_done"

$PY -m pytest -q -m "not test_run_only" --ignore=tests/faults
pytest_rc $?; machine=$?
wait $side
trap - INT TERM
side_rc() { [[ -e $work/$1.rc ]] || { echo 1; return; }; pytest_rc "$(cat "$work/$1.rc")"; echo $?; }
beside=$(side_rc beside)
after=$(side_rc after)
echo "---- test_run_only modules beside the fault suite ----"
cat "$work/beside.log"
echo "---- the other test_run_only modules (beside the machine-wide tests) ----"
cat "$work/after.log"
rm -rf "$work"
echo "run-tests: faults exit $faults, machine-wide exit $machine," \
     "test_run_only exit $beside (beside faults) and $after (the others)"
(( faults == 0 && machine == 0 && beside == 0 && after == 0 ))
