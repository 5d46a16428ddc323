# Heartbeater: the two quick-start commands, and the checks CI runs.
# `make run` starts a node on 127.0.0.1:8181 with its registry in ./heartbeater-data;
# `make test` runs the whole test suite. Both install libclang first if it is missing.

CARGO ?= cargo
ARGS ?=

.PHONY: run demo test deps release-deps check bench release

TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

deps:
	@./scripts/ensure-build-deps.sh --announce $(TARGET_DIR)/debug

release-deps:
	@./scripts/ensure-build-deps.sh --announce $(TARGET_DIR)/release

# `run` builds with the `test` profile, the one `cargo test` builds every
# dependency with: the profile's name is part of each unit's hash, so with
# the `dev` profile `make test` then `make run` (or the reverse) would
# compile RocksDB from source twice. Same code, same debug info. The
# build-dependency settings in Cargo.toml keep the two from resolving
# RocksDB's build script differently; scripts/check-one-rocksdb-build.sh
# (run by CI) proves it.
run: deps
	$(CARGO) run --profile test -p heartbeater-cli -- serve $(ARGS)

demo: deps
	$(CARGO) run --profile test -p heartbeater-cli -- demo $(ARGS)

test: deps
	$(CARGO) test --workspace

check: deps
	$(CARGO) fmt --all -- --check
	./scripts/clippy.sh

release: release-deps
	$(CARGO) build --release --workspace

bench: release-deps
	$(CARGO) run --release -p heartbeater-bench -- $(ARGS)
