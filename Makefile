# Every target does its own set-up, so each works on a fresh clone.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := .venv-tools/bin
TOOL_VERSIONS := aws-sam-cli==1.170.0 cfn-lint==1.58.0 checkov==3.2.459 cargo-lambda==1.9.2
# the template checks run offline
TEMPLATE_ENV := AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE

.PHONY: demo up test check fmt lint doc template sam-build bench

## demo: the whole reference system on this machine: starts the emulator, provisions
## template.yaml, builds and runs the six functions with emulated event source mappings, sends
## commands and checks the views; stops everything at the end (or on Ctrl-C)
demo:
	scripts/with-emulator.sh $(CARGO) run --quiet -p local-stack -- demo

## up: the same local stack, running until Ctrl-C (HTTP API on http://127.0.0.1:3000)
up:
	scripts/with-emulator.sh $(CARGO) run --quiet -p local-stack -- up

## test: run every test of the workspace (unit, integration against the local AWS emulator, doc
## tests); sets up the emulator's virtualenv on first use and stops the emulator afterwards
test:
	scripts/with-emulator.sh $(CARGO) test --workspace

## check: formatting, clippy and rustdoc with warnings as errors; the SAM template's validation,
## lint and security scan; and `sam build` of every function
check: fmt lint doc template sam-build

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# SAM CLI, cfn-lint, checkov and cargo-lambda (with zig), in a project-local virtualenv
$(TOOLS)/sam:
	python3 -m venv .venv-tools
	$(TOOLS)/pip install --quiet --disable-pip-version-check $(TOOL_VERSIONS)

## template: sam validate --lint, cfn-lint and checkov on template.yaml
template: $(TOOLS)/sam
	$(TEMPLATE_ENV) $(TOOLS)/sam validate --lint
	$(TEMPLATE_ENV) $(TOOLS)/cfn-lint template.yaml
	$(TEMPLATE_ENV) $(TOOLS)/checkov -f template.yaml --framework cloudformation --compact --quiet

## sam-build: build every function as SAM would deploy it (cargo-lambda, release, x86_64)
sam-build: $(TOOLS)/sam
	PATH="$(abspath $(TOOLS)):$$PATH" $(TEMPLATE_ENV) sam build --beta-features

## bench: the criterion benchmarks, then the side-by-side suite (bench/: the production path
## against its floor, the functions over canned AWS answers, latency, peak RSS, cold start, and
## aws-lambda-stream on the same batches; needs Node 20 for the peer, installed in bench/peer)
bench:
	$(CARGO) bench --workspace
	cd bench/peer && npm ci --no-audit --no-fund --loglevel=error
	$(CARGO) build --release -p listener -p stream-bench
	$(CARGO) run --release --quiet -p stream-bench
