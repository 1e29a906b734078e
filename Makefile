# Every target does its own set-up, so each works on a fresh clone.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test check fmt lint doc bench

## test: run every test of the workspace (unit, integration against the local AWS emulator, doc
## tests); sets up the emulator's virtualenv on first use and stops the emulator afterwards
test:
	scripts/with-emulator.sh $(CARGO) test --workspace

## check: formatting, clippy with warnings as errors, rustdoc with warnings as errors
check: fmt lint doc

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

## bench: the criterion benchmarks (release build)
bench:
	$(CARGO) bench --workspace
