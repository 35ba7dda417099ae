#!/usr/bin/env bash
# CLO on a GPU: the CLO tests (with KILN_REQUIRE_GPU=1) and `cargo bench --bench clo`.
#   bash scripts/gpu-clo.sh bundle [DIR]   # here: build the binaries, stripped, into DIR (.gpu-clo)
#   bash scripts/gpu-clo.sh run [DIR]      # there: run them; logs and clo-<device>.json to $OUT
# With the `device` tool: bundle into <checkout>/.gpu-clo, then run
# `bash scripts/gpu-clo.sh run` with carry [".gpu-clo"].
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what="${1:-}"
dir="${2:-.gpu-clo}"
case "$what" in
  bundle)
    set -e
    rm -rf "$dir" && mkdir -p "$dir"
    cargo test --release --test algorithms_run --test graph_run --test gpu_runtime --no-run --message-format=json 2>/dev/null \
      | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        shutil.copy(msg["executable"], sys.argv[1] + "/test-" + msg["target"]["name"])
' "$dir"
    cargo bench --bench clo --no-run --message-format=json 2>/dev/null \
      | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["bench"]:
        shutil.copy(msg["executable"], sys.argv[1] + "/bench-clo")
' "$dir"
    cp scripts/gpu-clo.sh "$dir/"
    strip "$dir"/test-* "$dir"/bench-* 2>/dev/null || true
    ls -la "$dir" && du -sh "$dir"
    ;;
  run)
    out="${OUT:-gpu-out}"
    mkdir -p "$out"
    export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 KILN_BENCH_DIR="$out" KILN_CACHE_DIR="${KILN_CACHE_DIR:-/tmp/kiln-cache}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    status=0
    for t in "$dir"/test-graph_run "$dir"/test-gpu_runtime "$dir/test-algorithms_run clo"; do
      name=$(basename "${t%% *}")
      echo "== $t"
      $t --test-threads=1 --nocapture > "$out/$name.log" 2>&1 || status=1
      grep -E "^test |test result|panicked" "$out/$name.log" | head -20
    done
    echo "== bench clo"
    "$dir/bench-clo" --bench 2>&1 | tee "$out/bench-clo.log" || status=1
    exit $status
    ;;
  *) echo "usage: $0 bundle|run [DIR]" >&2; exit 2 ;;
esac
