# chainbench: `make bench` (the main job) and `make test` each set up what
# they need first: Debian packages (ci/install-deps.sh) and a venv at .venv.

CLANG      ?= clang-19
BPFTOOL    ?= bpftool
PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
BUILD      := build
BPF_OUT    := $(BUILD)/bpf
VMLINUX_H  := $(BUILD)/vmlinux.h
ARCH       := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

BPF_SRCS   := $(wildcard bpf_src/*.bpf.c)
TEST_SRCS  := $(wildcard tests/bpf/*.bpf.c)
BPF_OBJS   := $(patsubst bpf_src/%.bpf.c,$(BPF_OUT)/%.bpf.o,$(BPF_SRCS))
TEST_OBJS  := $(patsubst tests/bpf/%.bpf.c,$(BPF_OUT)/tests/%.bpf.o,$(TEST_SRCS))

PROTO_SRC   ?= proto
PROTOS      := $(PROTO_SRC)/flow/flow.proto $(PROTO_SRC)/observer/observer.proto $(PROTO_SRC)/relay/relay.proto
PROTO_OUT   := $(BUILD)/proto
PROTO_STAMP := $(PROTO_OUT)/.stamp
PROTO_PY    ?= $(VPY)

BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -fno-strict-aliasing -Wall -Wextra -Werror \
              -Wno-unused-parameter -I$(BUILD) -Ibpf_src -MMD -MP

PYTEST_ARGS ?=
BENCH_ARGS  ?=
KERNEL_MATRIX_ARGS ?=
FUZZ_ARGS  ?=

ifeq ($(V),1)
Q :=
else
Q := @
endif

.DELETE_ON_ERROR:
.PHONY: all setup deps venv build test bench kernel-matrix fuzz faults dashboard-screenshot architecture clean distclean

all: build

setup: deps venv

deps:
	$(Q)ci/install-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(Q)test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(Q)$(VPY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(Q)touch $@

# Objects also built without a kernel feature, for kernels that lack it: the
# loader (harness/paths.py KERNEL_VARIANTS) picks the build the kernel can load.
VARIANT_OBJS := $(BPF_OUT)/netdev-nobpfloop.bpf.o $(BPF_OUT)/lxc-shared.bpf.o

build: $(BPF_OBJS) $(VARIANT_OBJS) $(TEST_OBJS) $(PROTO_STAMP)

$(VMLINUX_H):
	$(Q)mkdir -p $(dir $@)
	@echo "  BTF     $@"
	$(Q)$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BPF_OUT)/%.bpf.o: bpf_src/%.bpf.c $(VMLINUX_H) Makefile
	$(Q)mkdir -p $(dir $@)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BPF_OUT)/netdev-nobpfloop.bpf.o: bpf_src/netdev.bpf.c $(VMLINUX_H) Makefile
	$(Q)mkdir -p $(dir $@)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -DCB_NO_BPF_LOOP -c $< -o $@

# A node's lxc programs, loaded once for every pod's veth (bpf_src/lib/endpoint.h).
$(BPF_OUT)/lxc-shared.bpf.o: bpf_src/lxc.bpf.c $(VMLINUX_H) Makefile
	$(Q)mkdir -p $(dir $@)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -DCB_ENDPOINT_SHARED -c $< -o $@

$(BPF_OUT)/tests/%.bpf.o: tests/bpf/%.bpf.c $(VMLINUX_H) Makefile
	$(Q)mkdir -p $(dir $@)
	@echo "  BPF     $@"
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# Hubble's API: the flow/observer/relay schema in proto/ (Hubble's packages,
# messages, field names and numbers, so the wire and JSON forms are Hubble's)
# compiled with grpcio-tools into build/proto, imported only through
# harness/observe/proto.py. The venv (which has grpcio-tools) is made first when
# PROTO_PY is its python, so `make build` works on a fresh clone too;
# `make build PROTO_PY=/path/to/python` uses another python with grpcio-tools.
$(PROTO_STAMP): $(PROTOS) Makefile | $(if $(filter $(VPY),$(PROTO_PY)),$(VENV)/.installed)
	$(Q)rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	@echo "  PROTO   $(PROTO_OUT)"
	$(Q)$(PROTO_PY) -m grpc_tools.protoc -I$(PROTO_SRC) --python_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) $(patsubst $(PROTO_SRC)/%,%,$(PROTOS))
	$(Q)touch $@

-include $(BPF_OBJS:.o=.d) $(VARIANT_OBJS:.o=.d) $(TEST_OBJS:.o=.d)

test: setup build
	$(Q)ci/run-tests.sh $(PYTEST_ARGS)

# All suites, quick profile (chainbench bench all --profile quick): results/ and
# the dashboard results/index.html.
bench: setup build
	$(Q)$(VENV)/bin/chainbench bench $(BENCH_ARGS)

# Release check: Debian kernels booted under qemu (ci/kernel_matrix/README.md).
kernel-matrix: setup build
	$(Q)ci/kernel_matrix/run.sh $(KERNEL_MATRIX_ARGS)

# Adversarial fuzzing, about half an hour here: the malformed corpus then seeded
# random mutations (tests/adversarial/fuzz.py, >= 1,000,000 packets, bounded to 28
# minutes; FUZZ_ARGS="--seed 2 --packets 2000000 --minutes 60"), then the random
# differential stage against the RFC oracle at FUZZ_DIFF_PACKETS packets (make test
# runs 60,000).
FUZZ_DIFF_PACKETS ?= 1000000
fuzz: setup build
	$(Q)$(VPY) -m tests.adversarial.fuzz $(FUZZ_ARGS)
	$(Q)CHAINBENCH_FUZZ_PACKETS=$(FUZZ_DIFF_PACKETS) ci/run-tests.sh -q -s tests/test_adversarial_differential.py

# Fault injection, the full run: SIGINT, SIGTERM and SIGKILL at 20 seeded points of
# each long command over its whole run, `chainbench down` after each, nothing left
# (tests/faults; make test runs 3 points each, drawn in the first half of each run).
# One JSON line per point in FAULTS_REPORT.
FAULTS_POINTS ?= 20
FAULTS_SEED   ?= 12
FAULTS_REPORT ?= faults-report.jsonl
faults: setup build
	$(Q)FAULTS_POINTS=$(FAULTS_POINTS) FAULTS_SEED=$(FAULTS_SEED) FAULTS_WINDOW=1 \
	  FAULTS_REPORT=$(abspath $(FAULTS_REPORT)) ci/run-tests.sh -q tests/faults

# docs/dashboard.png, the README's picture of the dashboard: renders results/
# (run `make bench` first) and photographs the page in headless Chromium.
dashboard-screenshot: setup
	$(Q)$(VPY) -m bench.report.screenshot --results results --out docs/dashboard.png

# docs/architecture.dot and .svg, the README's picture of the packages by layer, from the
# code's imports (ci/architecture.py; tests/test_layers.py fails when the .dot is stale).
architecture: setup
	$(Q)command -v dot >/dev/null || (apt-get install -y -q graphviz >/dev/null)
	$(Q)$(VPY) -m ci.architecture

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV) *.egg-info
