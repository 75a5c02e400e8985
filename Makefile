# Sluice: `make run` starts one node on 127.0.0.1:9092; `make test` runs every test.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/cache/sluice/target
export CARGO_TERM_COLOR ?= never
BIN_DEBUG := $(CARGO_TARGET_DIR)/debug/sluice
BIN_RELEASE := $(CARGO_TARGET_DIR)/release/sluice

.PHONY: run build deps test-deps lint unit test interop cluster compose-test fuzz-smoke bench release clean-data local-cluster \
	image cluster-up cluster-down cluster-status

deps:
	@deploy/install-deps.sh build

test-deps:
	@deploy/install-deps.sh test

build: deps
	cargo build -p sluice

## One node on 127.0.0.1:9092 (admin HTTP on 127.0.0.1:9644), data in ./sluice-data.
run: build
	$(BIN_DEBUG) --data-dir ./sluice-data $(ARGS)

## Style checks, exactly as CI runs them.
lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## The binary the test targets use comes from this one build: `cargo build -p sluice` alone
## resolves other features (no dev-dependencies) and would build the crates a second time.
TEST_BUILD := cargo build --workspace --all-targets

## Unit, property and crash tests of every crate, then the rdkafka client tests.
unit: deps
	$(TEST_BUILD)
	cargo nextest run --workspace --no-fail-fast --failure-output final

## Python (confluent-kafka, kafka-python, aiokafka), kcat and Go clients against a real node.
interop: test-deps
	$(TEST_BUILD)
	SLUICE_BIN=$(BIN_DEBUG) tests/interop/run.sh

## A bounded fuzzing run of every fuzz target.
fuzz-smoke: deps
	tests/fuzz-smoke.sh

## Three local processes: leader kills under an idempotent acks=all producer, a follower kill
## (ISR, min.insync.replicas), coordinator failover, unique producer ids; then the interop
## suite against the three nodes with replication factor 3.
cluster: test-deps
	$(TEST_BUILD)
	SLUICE_BIN=$(BIN_DEBUG) tests/cluster/run.sh
	SLUICE_BIN=$(BIN_DEBUG) SLUICE_INTEROP_CLUSTER=1 tests/interop/run.sh

## The compose cluster in containers (image from the debug build): clients on the host and in
## the compose network, Prometheus, kills, network cuts, a rolling restart. Skipped (and says
## so) where no Docker engine is usable.
compose-test: test-deps
	$(TEST_BUILD)
	SLUICE_BIN=$(BIN_DEBUG) tests/compose/run.sh

test: test-deps lint unit interop cluster compose-test fuzz-smoke
	@echo "make test: all passed"

release: deps
	cargo build --release -p sluice -p sluice-tests --bin sluice --bin sluice-bench

## Throughput and latency against a release build (see docs/benchmarks.md).
bench: release test-deps
	tests/bench.sh
	tests/bench-cluster.sh

## Three nodes on 127.0.0.1 (Kafka 19092, 29092, 39092), data in ./local-cluster; see docs/configuration.md.
## CMD is up (default), down, status, clean, "kill N" or "start N": make local-cluster CMD=status
CMD ?= up
local-cluster: build
	SLUICE_BIN=$(BIN_DEBUG) deploy/local-cluster.sh $(CMD)

## The image sluice:local, FROM scratch: the release binary (or SLUICE_BIN=...) and its shared
## libraries; no registry needed. deploy/Dockerfile is the same image for machines with one.
image: deps
	@if [ -z "$(SLUICE_BIN)" ]; then cargo build --release -p sluice; fi
	SLUICE_BIN="$(or $(SLUICE_BIN),$(BIN_RELEASE))" deploy/image.sh sluice

## The three-node compose cluster (docker-compose.yml): Kafka on 127.0.0.1:19092,29092,39092,
## admin HTTP on 19644,29644,39644, Prometheus on 9090; see docs/configuration.md.
cluster-up: image
	deploy/compose.sh up

## Stops and removes the compose cluster's containers; its volumes stay (deploy/compose.sh clean drops them).
cluster-down:
	deploy/compose.sh down

## The compose cluster's containers and which node leads each partition.
cluster-status:
	deploy/compose.sh status

clean-data:
	rm -rf ./sluice-data
