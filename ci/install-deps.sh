#!/usr/bin/env bash
# Install the Debian packages chainbench needs, only those missing (idempotent).
set -euo pipefail

PACKAGES=(
  clang-19 llvm-19 libbpf-dev bpftool      # CO-RE build of bpf_src/
  iproute2 iptables nftables               # namespaces, tc, baselines
  iputils-ping                             # ICMP checks inside namespaces
  containernetworking-plugins              # the primary CNI (ptp, bridge, host-local, portmap)
  podman runc busybox-static               # a real runtime (CNI backend) running the chained plugin
  nginx-light wrk                          # pods' HTTP server, HTTP load
  linux-perf                               # bench macro --perf: where the CPU goes
  chromium                                 # the dashboard test renders results/index.html headless
  nodejs                                   # npm ci of web/: the service map's graph library
  prometheus                               # a real Prometheus scrapes the metrics (tests run it in a cb- netns)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg-query fails for a package it has never seen: that is "missing" too.
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# Debian's nodejs comes without npm (its own package); NodeSource's includes it.
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages like nginx and prometheus start their service on install; chainbench runs
# servers only inside its own namespaces, so keep services from starting meanwhile
# (policy-rc.d denies every start).
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# Prometheus's package also enables its service for the next boot where systemd runs:
# the tests run their own Prometheus inside a cb- namespace, none may listen on the host.
if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
