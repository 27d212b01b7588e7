# Aether's entry points. `make demo` and `make test` set up everything they need on
# a fresh Debian machine (packages, Kubernetes and Garage builds, the local cluster).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help up down status demo test unit e2e lint crds bench fuzz

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

demo: up ## fresh machine -> local cluster + storage up (the app deploy comes with the operator)
	@$(LOCAL_ENV) && kubectl get nodes,crd
	@echo "The local cluster is up: eval \"\$$(hack/cluster.sh env)\" to use it."
	@echo "Deploying the example app needs the operator and 'aether push' (not built yet)."

test: lint unit up ## every test: lint, unit, a short fuzz run, and e2e on the local cluster
	$(MAKE) fuzz FUZZ_SECONDS=30
	$(LOCAL_ENV) && $(MAKE) e2e

unit: ## unit and integration tests that need no cluster
	cargo test --workspace

e2e: ## e2e tests against the cluster in KUBECONFIG (storage from AETHER_S3_*), operator run alongside
	hack/with-operator.sh cargo test -p aether-e2e -- --ignored --test-threads=$(E2E_THREADS)

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

crds: ## regenerate config/crd from the Rust types
	cargo run -q -p aether-crds --bin crdgen -- config/crd/aether.dev.yaml

bench: ## pack/unpack speed vs tar|zstd on the example app's dependencies
	hack/bench.sh

FUZZ_SECONDS ?= 60
fuzz: ## fuzz the unpacker (cargo-fuzz, nightly) for FUZZ_SECONDS
	hack/fuzz.sh $(FUZZ_SECONDS)
