#!/usr/bin/env bash
# Runs Flotilla's whole test suite: formatting, lints, every test of every crate, and a check
# that RocksDB is linked from the system. This is the README's test command and what CI
# (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Without ROCKSDB_LIB_DIR (.cargo/config.toml) the rocksdb crate silently builds RocksDB from
# source (about 35 CPU-minutes per profile). Fail loudly if that happened.
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/debug/engine-bench"
cargo build --locked -q -p flotilla-engine --bin engine-bench
# ldd's output is read whole before grep looks at it: `ldd | grep -q` under pipefail fails
# whenever grep stops reading at its match before ldd has written the rest (SIGPIPE).
links="$(ldd "$bin")"
if ! grep -q 'librocksdb\.so' <<<"$links"; then
  echo "error: $bin does not link librocksdb.so dynamically (RocksDB was built from source?)" >&2
  exit 1
fi
echo "rocksdb link check: $bin links $(grep -o 'librocksdb\.so[^ ]*' <<<"$links")"
