#!/usr/bin/env bash
# Installs the system packages Flotilla's build needs (Debian/Ubuntu):
#   librocksdb-dev  RocksDB linked from the system (see .cargo/config.toml)
#   libclang-dev    bindgen, used by the rocksdb crate even for the system library
#   clang           the same
#   redis-tools     redis-benchmark, for the RESP server's compatibility test
# Idempotent: does nothing when everything is already installed.
set -euo pipefail
pkgs=(librocksdb-dev libclang-dev clang redis-tools)
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
