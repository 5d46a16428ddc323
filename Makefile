# Heartbeater: the two quick-start commands, and the checks CI runs.
# `make run` starts a node on 127.0.0.1:8181 with its registry in ./heartbeater-data;
# `make test` runs the whole test suite. Both install libclang first if it is missing.

CARGO ?= cargo
ARGS ?=

.PHONY: run demo test deps check bench release

deps:
	@./scripts/ensure-build-deps.sh

# `run` builds with the `test` profile, the one `cargo test` builds every
# dependency with: the profile's name is part of each unit's hash, so with
# the `dev` profile `make test` then `make run` (or the reverse) would
# compile RocksDB from source twice. Same code, same debug info.
run: deps
	$(CARGO) run --profile test -p heartbeater-cli -- serve $(ARGS)

demo: deps
	$(CARGO) run --profile test -p heartbeater-cli -- demo $(ARGS)

test: deps
	$(CARGO) test --workspace

check: deps
	$(CARGO) fmt --all -- --check
	./scripts/clippy.sh

release: deps
	$(CARGO) build --release --workspace

bench: deps
	$(CARGO) run --release -p heartbeater-bench -- $(ARGS)
