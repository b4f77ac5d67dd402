# read-api: a JSON read API with a Redis replica in every pod.
# `make help` lists every target; logic lives in scripts/ and loadtest/.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
CONTAINER_TOOL ?= podman
IMAGE_REGISTRY ?= localhost
IMAGE_TAG ?= 0.1.0
NAMESPACE ?= read-api
TOPOLOGY ?= sidecar

export IMAGE_REGISTRY IMAGE_TAG CONTAINER_TOOL NAMESPACE

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	/^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: deps
deps: ## Install the Debian packages the tests need (redis-server, redis-tools, stunnel4, openssl).
	@scripts/install-deps.sh redis-server redis-cli stunnel4 openssl

.PHONY: build
build: ## Build the API in release mode (target/release/read-api).
	$(CARGO) build --release --locked -p read-api

.PHONY: fmt
fmt: ## Format the Rust code.
	$(CARGO) fmt --all

.PHONY: lint
lint: ## Check formatting and run clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: test
test: deps lint ## Run every test: lint, unit and integration tests against real Redis.
	@if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

##@ Local topology

.PHONY: demo
demo: ## Run master (TLS) -> stunnel -> replica -> API locally, in the foreground; Ctrl-C stops it.
	@scripts/demo.sh

.PHONY: demo-down
demo-down: ## Stop a demo started elsewhere (state and logs in target/demo).
	@scripts/local-topology.sh down

.PHONY: demo-seed
demo-seed: ## Write KEY=... VALUE=... through the local demo's master.
	@[[ -n "$(KEY)" ]] || { echo "usage: make demo-seed KEY=known-key VALUE=text" >&2; exit 2; }
	@scripts/local-topology.sh seed "$(KEY)" "$(VALUE)"
