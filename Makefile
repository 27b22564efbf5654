# Entry points for people and CI. Every target works on a fresh machine with the Rust
# toolchain; what else a target needs, it installs itself.

CARGO ?= cargo

.PHONY: build test dev lint bench clean

build:
	$(CARGO) build --workspace --release

# The whole test suite: unit, property, storage-suite and multi-process tests.
test:
	$(CARGO) nextest run --workspace --no-fail-fast

# Starts the example topology (5 controllers on loopback) and waits for Ctrl-C.
dev:
	$(CARGO) build --release -p failover-cli
	./target/release/failover dev --config sites.example.yaml --data-dir .dev-data

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Measurements written to docs/benchmarks.md: the controller cluster, then the lease API
# against etcd (installs Debian's etcd-server if `etcd` is missing).
bench:
	$(CARGO) build --release -p failover-cli -p failover-bench
	python3 scripts/bench-controller.py
	python3 scripts/bench-leases.py
	python3 scripts/bench-executor.py
	python3 scripts/bench-failover.py --runs 20
	python3 scripts/bench-churn.py

clean:
	rm -rf .dev-data target
