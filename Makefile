# Heartbeater: the two quick-start commands, and the checks CI runs.
# `make run` starts a node on 127.0.0.1:8181 with its registry in ./heartbeater-data;
# `make test` runs the whole test suite. Both install libclang first if it is missing.

CARGO ?= cargo
ARGS ?=

.PHONY: run test deps check bench release

deps:
	@./scripts/ensure-build-deps.sh

run: deps
	$(CARGO) run -p heartbeater-cli -- serve $(ARGS)

test: deps
	$(CARGO) test --workspace

check: deps
	$(CARGO) fmt --all -- --check
	./scripts/clippy.sh

release: deps
	$(CARGO) build --release --workspace

bench: deps
	$(CARGO) run --release -p heartbeater-bench -- $(ARGS)
