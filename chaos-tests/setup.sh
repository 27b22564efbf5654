#!/usr/bin/env bash
# Installs what the chaos harness needs beyond the Rust toolchain, only if it is missing:
# PostgreSQL (the ledger), iptables (partitions and loss), iproute2 (namespaces, tc) and
# util-linux (setpriv, to run PostgreSQL as the postgres user), etcd for the baseline.
# Debian packages only.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# The baseline (an etcd lock, no fencing): Debian's etcd-server and etcdctl, unless the
# caller skips the baseline (CHAOS_BASELINE=0, as CI does).
if [ "${CHAOS_BASELINE:-1}" = 1 ]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "chaos setup: installing ${need[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
