#!/usr/bin/env bash
# Installs the system packages Flotilla's build needs (Debian/Ubuntu):
#   librocksdb-dev  RocksDB linked from the system (see .cargo/config.toml)
#   libclang-dev    bindgen, used by the rocksdb crate even for the system library
#   clang           the same
#   redis-tools     redis-benchmark, for the RESP server's compatibility test
#   protobuf-compiler  protoc, which the etcd-client crate's build script needs (flotilla-bench)
#   etcd-server, redis-server  the peers flotilla-bench measures beside Flotilla (its quick
#                   test runs etcd when installed); about 25 MB together, no service started
# Idempotent: does nothing when everything is already installed.
set -euo pipefail
pkgs=(librocksdb-dev libclang-dev clang redis-tools protobuf-compiler etcd-server redis-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from rustup first" >&2; exit 1; }
