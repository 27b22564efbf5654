#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (docs/testing.md, "Fuzzing") with libFuzzer on stable
# Rust: LLVM's sanitizer-coverage passes are stable codegen options, so no nightly
# toolchain and no cargo-fuzz are needed. Usage:
#   scripts/fuzz.sh SECONDS_PER_TARGET [TARGET...]     (targets: topology command wire)
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script; replay it with
#   fuzz/target/<host>/release/TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# libfuzzer-sys compiles libFuzzer's C++ sources: a fresh machine may have only gcc.
if ! command -v c++ >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y g++
fi
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(topology command wire)
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps these flags off build scripts and proc macros, as cargo-fuzz does.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
cargo build --release --target "$host" --bins
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz $t for ${secs}s"
  status=0
  "target/$host/release/$t" "corpus/$t" "seeds/$t" -max_total_time="$secs" \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 -max_len=8192 \
    >"artifacts/$t/last-run.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|SUMMARY)' "artifacts/$t/last-run.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "artifacts/$t/last-run.log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/"
    exit 1
  fi
done
