# Aether's entry points. `make demo` and `make test` set up everything they need on
# a fresh Debian machine (packages, Kubernetes and Garage builds, the local cluster).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help up down status deploy demo test unit e2e chaos lint crds bench fuzz

# The local cluster's environment (KUBECONFIG, storage, images), for targets that
# default to it. `make e2e` alone uses whatever environment you give it.
LOCAL_ENV = eval "$$(hack/cluster.sh env)"
# 2 cores: tests that start pods share the node, so keep parallelism modest.
E2E_THREADS ?= 3

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

up: ## start the local Kubernetes + S3 (builds them once, cached by version)
	hack/cluster.sh up

down: ## stop the local cluster and everything it started
	hack/cluster.sh down

status: ## what runs, and the versions
	hack/cluster.sh status

deploy: up ## build the operator and runtime images (debug builds; AETHER_IMAGES=dockerfile for the Dockerfile's), run the operator in aether-system
	hack/deploy.sh

demo: deploy ## fresh machine -> cluster, storage, operator; push examples/express-api and curl it
	hack/demo.sh

test: lint unit up ## every test: lint, unit, a short fuzz run, e2e and chaos on the local cluster, on the Dockerfile's images
	AETHER_IMAGES=dockerfile hack/deploy.sh
	$(MAKE) fuzz FUZZ_SECONDS=30
	$(LOCAL_ENV) && $(MAKE) e2e chaos

unit: ## unit and integration tests that need no cluster
	cargo test --workspace

e2e: ## e2e tests against the cluster in KUBECONFIG with Aether installed (storage from AETHER_S3_*)
	cargo build -q -p aether-cli
	cargo test -p aether-e2e -- --ignored --test-threads=$(E2E_THREADS) --skip $(CHAOS_TEST) --skip $(OUTAGE_TEST)

# The fault tests crash the operator, and stop the API server and the storage, for
# minutes: not part of `make e2e`, and one at a time.
CHAOS_TEST = operator_crashes_during_pushes_and_deploys
OUTAGE_TEST = the_api_server_and_the_storage_stopped
chaos: ## crash the operator at random points, stop the API server and storage, during pushes and deploys; check nothing was lost (like e2e)
	cargo build -q -p aether-cli
	cargo test -p aether-e2e --test chaos -- --ignored --nocapture $(CHAOS_TEST)
	cargo test -p aether-e2e --test outage -- --ignored --nocapture $(OUTAGE_TEST)

lint: ## rustfmt, clippy (warnings are errors), shellcheck on hack/, cargo-deny
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	shellcheck -x hack/*.sh .ci/run
	hack/deny.sh

crds: ## regenerate config/crd from the Rust types
	cargo run -q -p aether-crds --bin crdgen -- config/crd/aether.dev.yaml

# RUNS, RUNS_DEV, BENCH_JSON: see hack/bench-deploy.sh (installs buildah and docker-registry).
bench: ## pack/unpack vs tar|zstd; change -> served vs a Dockerfile pipeline; 1000 apps (needs `make deploy`)
	hack/bench.sh
	hack/bench-deploy.sh
	if [ -z "$${KUBECONFIG:-}" ]; then $(LOCAL_ENV); fi; cargo run -q -p aether-e2e --bin bench-scale

FUZZ_SECONDS ?= 60
fuzz: ## fuzz the unpacker (cargo-fuzz, nightly) for FUZZ_SECONDS
	hack/fuzz.sh $(FUZZ_SECONDS)
