# Entry points for people and CI. Every target works on a fresh machine with the Rust
# toolchain; what else a target needs, it installs itself.

CARGO ?= cargo

.PHONY: build test dev lint lint-format bench clean chaos chaos-long chaos-build broken-build sim sim-ci sim-broken sim-replay sim-build fuzz fuzz-ci

build:
	$(CARGO) build --workspace --release

# The whole test suite: unit, property, storage-suite and multi-process tests, then the
# CI-sized deterministic simulation.
test:
	$(CARGO) nextest run --workspace --no-fail-fast
	$(MAKE) sim-ci

# Starts the example topology (5 controllers on loopback) and waits for Ctrl-C.
dev:
	$(CARGO) build --release -p failover-cli
	./target/release/failover dev --config sites.example.yaml --data-dir .dev-data

lint: lint-format
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The checks of `lint` that compile nothing. CI runs these, and clippy's lints inside the
# test build instead of a separate check build (.ci/run).
lint-format:
	$(CARGO) fmt --all -- --check
	python3 scripts/check-architecture.py

# Measurements written to docs/benchmarks.md: the controller cluster, then the lease API
# against etcd (installs Debian's etcd-server if `etcd` is missing).
bench:
	$(CARGO) build --release -p failover-cli -p failover-bench
	python3 scripts/bench-controller.py
	python3 scripts/bench-leases.py
	python3 scripts/bench-executor.py
	python3 scripts/bench-failover.py --runs 20
	python3 scripts/bench-churn.py

# The chaos harness (chaos-tests/, docs/chaos.md). Needs root: it creates network
# namespaces. `make chaos` is the quick profile (every scenario once, then the broken build
# that the checks must catch, then the etcd-lock baseline, which never fails the target:
# it shows what a lock without fencing lets through); `make chaos-long` runs many seeds.
# CI runs `make chaos CHAOS_BASELINE=0`: the baseline proves nothing about failover (it
# cannot fail), so CI skips it and the etcd install it needs.
CHAOS = ./target/debug/chaos
CHAOS_FLAGS ?=
CHAOS_BASELINE ?= 1

# The deliberately broken build (the controller's test-only feature
# `chaos-broken-skip-lease-wait`: promotions complete without waiting out the old site's
# leases), copied aside as target/debug/failover-broken and failover-sim-broken: the chaos
# harness and the simulation must both catch it. One build serves both. Both builds select
# the whole workspace, so Cargo resolves the same features as for the normal binaries and
# rebuilds only the controller and what depends on it; the normal build after it reuses
# the normal artifacts, which Cargo keeps beside the broken ones.
broken-build:
	$(CARGO) build --workspace --bins --features failover-sim/broken-skip-lease-wait
	cp target/debug/failover target/debug/failover-broken
	cp target/debug/failover-sim target/debug/failover-sim-broken
	$(CARGO) build --workspace --bins

chaos-build: broken-build
	CHAOS_BASELINE=$(CHAOS_BASELINE) bash chaos-tests/setup.sh

chaos: chaos-build
	rm -rf chaos-tests/results/quick
	$(CHAOS) run all --results chaos-tests/results/quick --gate safety $(CHAOS_FLAGS)
	$(CHAOS) run broken-skip-lease-wait --failover-bin target/debug/failover-broken \
		--results chaos-tests/results/quick --gate safety $(CHAOS_FLAGS)
	if [ "$(CHAOS_BASELINE)" = 1 ]; then \
		$(CHAOS) run all --baseline --results chaos-tests/results/quick $(CHAOS_FLAGS) || true; \
	fi
	$(CHAOS) report --results chaos-tests/results/quick --doc docs/chaos.md --section quick

chaos-long: chaos-build
	rm -rf chaos-tests/results/long
	$(CHAOS) run all --seed 100 --runs 10 --results chaos-tests/results/long $(CHAOS_FLAGS) || true
	$(CHAOS) run broken-skip-lease-wait --seed 100 --runs 3 --failover-bin target/debug/failover-broken \
		--results chaos-tests/results/long $(CHAOS_FLAGS) || true
	$(CHAOS) run all --baseline --seed 100 --runs 5 --results chaos-tests/results/long $(CHAOS_FLAGS) || true
	$(CHAOS) report --results chaos-tests/results/long --doc docs/chaos.md --section long

clean:
	rm -rf .dev-data target

# The deterministic simulation (crates/failover-sim, docs/testing.md). It needs tokio's
# seedable `select!` order, which only `--cfg tokio_unstable` exposes: .cargo/config.toml
# sets it for the whole workspace, so the simulation runs from the same debug build as the
# tests (whose dev profile optimizes it, the controller and every dependency).
# `make sim SEEDS=100000` for long runs, `make sim-replay SEED=n` to replay one seed.
SEEDS ?= 1000
SIM_FROM ?= 0
SIM_THREADS ?= 2
SIM = ./target/debug/failover-sim

# `--workspace`, as the tests select it: with `-p failover-sim` alone Cargo would resolve
# other dependency features and compile every dependency again.
sim-build:
	$(CARGO) build --workspace --bins

sim: sim-build
	$(SIM) --seeds $(SEEDS) --from $(SIM_FROM) --threads $(SIM_THREADS)

sim-replay: sim-build
	$(SIM) --seed $(SEED)

# Proves the checks bite: the broken controller must be caught breaking S1 within the CI
# seed budget.
SIM_BROKEN_SEEDS ?= 200
sim-broken: broken-build
	./target/debug/failover-sim-broken --seeds $(SIM_BROKEN_SEEDS) --threads $(SIM_THREADS) \
		--expect-violation S1

# What CI runs after the workspace tests (which include the simulation's own tests: same
# seed same trace): the CI seed budget, then the broken build caught.
SIM_CI_SEEDS ?= 1000
sim-ci: sim-build
	$(SIM) --seeds $(SIM_CI_SEEDS) --threads $(SIM_THREADS)
	$(MAKE) sim-broken

# Fuzzing (fuzz/, docs/testing.md "Fuzzing"): libFuzzer on stable Rust, its own workspace
# and target dir. `make fuzz` runs each target (topology parser, command decoding and
# apply, wire conversions) for FUZZ_SECONDS; CI runs `fuzz-ci`, 15 s per target.
FUZZ_SECONDS ?= 600
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-ci:
	bash scripts/fuzz.sh 15
