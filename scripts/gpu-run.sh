#!/usr/bin/env bash
# Runs the bundle made by scripts/gpu-bundle.sh on a GPU machine: every GPU test with
# KILN_REQUIRE_GPU=1 (a missing GPU fails), then the benches. Logs and bench JSON go to
# $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 KILN_BENCH_DIR="$out" KILN_CACHE_DIR="${KILN_CACHE_DIR:-/tmp/kiln-cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0
for t in .gpu/test-*; do
  echo "== $t"
  "$t" --test-threads=1 --nocapture > "$out/$(basename "$t").log" 2>&1 || status=1
  grep -E "^test |test result|panicked|SKIPPED|warm build|disk hit" "$out/$(basename "$t").log" | sort | uniq -c | sort -rn | head -40
done
./.gpu/kiln roofline 2>&1 | tee "$out/roofline.log" || status=1
./.gpu/kiln demo 2>&1 | tail -5 | tee "$out/demo.log"
for b in .gpu/bench-*; do
  [ -e "$b" ] || continue
  echo "== $b"
  "$b" --bench 2>&1 | tee "$out/$(basename "$b").log" || status=1
done
exit $status
