#!/usr/bin/env bash
# `cargo clippy --workspace --all-targets -- -D warnings`, run as a normal
# build with clippy as the workspace's compiler wrapper. Same lints; but it
# reuses the build of `cargo build`/`cargo test`, where `cargo clippy` (a
# check build) would compile RocksDB from source a second time. The `test`
# profile is the one `cargo test` (and `make run`) builds dependencies with;
# under `dev` their hashes would differ and RocksDB would compile again.
set -euo pipefail
cd "$(dirname "$0")/.."
driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
RUSTC_WORKSPACE_WRAPPER="$driver" \
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
    cargo build --profile test --workspace --all-targets "$@"
