#!/usr/bin/env bash
# Kernel compatibility matrix (see ci/kernel_matrix/README.md): boots the
# Debian kernels of kernels.toml under qemu, loads build/bpf/*.bpf.o and runs
# the BPF_PROG_TEST_RUN tests in each; writes results/kernel-matrix.json.
# Needs root, the venv (.venv) and built objects (make build).  Arguments go
# to the driver, python -m ci.kernel_matrix (--only NAME, --timeout S,
# --cache DIR, --no-tests, --list, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ! -x .venv/bin/python ]]; then
  echo "kernel-matrix: ERROR: no .venv: run \`make setup build\` first" >&2
  exit 2
fi
exec .venv/bin/python -m ci.kernel_matrix "$@"
