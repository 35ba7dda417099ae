#!/usr/bin/env bash
# Runs the bundle made by scripts/gpu-bundle.sh on a GPU machine: every GPU test with
# KILN_REQUIRE_GPU=1 (a missing GPU fails), then the PyTorch baselines
# (benches/baselines/attention.py and topk.py, whose JSON the Rust benches read through
# KILN_BASELINE_JSON and KILN_TOPK_BASELINE_JSON), then the benches. Logs, bench JSON and SVG
# plots go to $OUT (or ./gpu-out).
#   bash scripts/gpu-run.sh            # everything
#   bash scripts/gpu-run.sh tests      # only the GPU tests (and roofline, demo)
#   bash scripts/gpu-run.sh benches    # only the baseline and the benches
#   bash scripts/gpu-run.sh decode     # the baselines, then the decode-step benches (HATA's
#                                      # speed shapes, top-k, Chelsea); a .gpu/before-hata
#                                      # and .gpu/before-chelsea (older bench-hata and
#                                      # bench-chelsea) run beside the new ones
#   bash scripts/gpu-run.sh adacluster # the algorithm checks on the GPU, the PyTorch
#                                      # AdaCluster baselines (SDPA, k-means), then its bench
#   bash scripts/gpu-run.sh bigmac     # the BigMac bench (grouped GEMM vs cuBLAS, CDAC vs
#                                      # BigMac layer stages, expert parallelism over NCCL
#                                      # on 1/2/4 of the visible GPUs; NCCL from the
#                                      # nvidia-nccl-cu13 wheel or KILN_NCCL_PATH; a missing
#                                      # NCCL fails); run after `tests`
#   bash scripts/gpu-run.sh pat        # PAT's GPU checks (decoder kernels; the decoder at
#                                      # TP 1 and 2/4 of the visible GPUs vs float64 and
#                                      # TP 1), then its step-latency profile (bench-pat)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what="${1:-all}"
case "$what" in
  all|tests|benches|decode|adacluster|bigmac|pat) ;;
  *) echo "usage: $0 [all|tests|benches|decode|adacluster|bigmac|pat]" >&2; exit 2 ;;
esac
out="${OUT:-gpu-out}"
mkdir -p "$out"
export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 KILN_REQUIRE_CUBLAS=1 KILN_BENCH_DIR="$out" KILN_CACHE_DIR="${KILN_CACHE_DIR:-/tmp/kiln-cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0
# run_baseline NAME VAR: runs benches/baselines/NAME.py into $out/NAME-baseline-torch.json and,
# when the file was written, exports VAR (the variable the Rust bench reads it through)
run_baseline() {
  local json="$out/$1-baseline-torch.json"
  echo "== benches/baselines/$1.py"
  if python3 "benches/baselines/$1.py" "$json" 2>&1 | tee "$out/$1-baseline.log" && [ -s "$json" ]; then
    export "$2=$json"
  else
    echo "the PyTorch $1 baseline failed; see $out/$1-baseline.log"
    status=1
  fi
}
if [ "$what" = all ] || [ "$what" = tests ]; then
  for t in .gpu/test-*; do
    echo "== $t"
    "$t" --test-threads=1 --nocapture > "$out/$(basename "$t").log" 2>&1 || status=1
    grep -E "^test |test result|panicked|SKIPPED|warm build|disk hit" "$out/$(basename "$t").log" | sort | uniq -c | sort -rn | head -40
  done
fi
# the measured ceilings (mma.sync rate included) that every bench's "% roof" column uses
./.gpu/kiln roofline 2>&1 | tee "$out/roofline.log" || status=1
if [ "$what" = all ] || [ "$what" = tests ]; then
  ./.gpu/kiln demo > "$out/demo.log" 2>&1 || status=1
  tail -5 "$out/demo.log"
fi
if [ "$what" = adacluster ]; then
  echo "== .gpu/test-algorithms_run"
  .gpu/test-algorithms_run --test-threads=1 --nocapture > "$out/test-algorithms_run.log" 2>&1 || status=1
  grep -E "^test |test result|panicked" "$out/test-algorithms_run.log"
  run_baseline adacluster KILN_ADACLUSTER_BASELINE_JSON
  echo "== .gpu/bench-adacluster"
  .gpu/bench-adacluster --bench 2>&1 | tee "$out/bench-adacluster.log" || status=1
  exit $status
fi
if [ "$what" = bigmac ]; then
  echo "== .gpu/bench-bigmac"
  KILN_REQUIRE_NCCL=1 .gpu/bench-bigmac --bench 2>&1 | tee "$out/bench-bigmac.log" || status=1
  exit $status
fi
if [ "$what" = pat ]; then
  echo "== .gpu/test-algorithms_run pat"
  KILN_REQUIRE_NCCL=1 .gpu/test-algorithms_run pat --test-threads=1 --nocapture 2>&1 | tee "$out/test-pat.log" || status=1
  echo "== .gpu/bench-pat"
  KILN_REQUIRE_NCCL=1 .gpu/bench-pat --bench 2>&1 | tee "$out/bench-pat.log" || status=1
  exit $status
fi
if [ "$what" != tests ]; then
  run_baseline attention KILN_BASELINE_JSON
  # torch.topk for the top-k bench (benches/topk.rs reads it through KILN_TOPK_BASELINE_JSON)
  run_baseline topk KILN_TOPK_BASELINE_JSON
fi
if [ "$what" = decode ]; then
  for b in .gpu/bench-hata .gpu/before-hata; do
    [ -e "$b" ] || continue
    echo "== $b h32/8"
    "$b" --bench h32/8 2>&1 | tee "$out/$(basename "$b").log" || status=1
  done
  for b in .gpu/bench-topk .gpu/bench-chelsea .gpu/before-chelsea; do
    [ -e "$b" ] || continue
    echo "== $b"
    "$b" --bench 2>&1 | tee "$out/$(basename "$b").log" || status=1
  done
fi
if [ "$what" = all ] || [ "$what" = benches ]; then
  # autotune first: it stores the winners the other benches' kernels then use
  for b in .gpu/bench-autotune $(ls .gpu/bench-* | grep -v bench-autotune); do
    [ -e "$b" ] || continue
    echo "== $b"
    "$b" --bench 2>&1 | tee "$out/$(basename "$b").log" || status=1
  done
fi
exit $status
