#!/usr/bin/env bash
# Builds the release test and bench binaries that need a GPU and copies them, stripped, into
# .gpu/ (ignored by git). Then, on a GPU machine, from the repository root:
#   bash scripts/gpu-run.sh            # GPU tests with KILN_REQUIRE_GPU=1, then the benches
# With the `device` tool: run `bash scripts/gpu-run.sh` with carry [".gpu"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .gpu && mkdir -p .gpu
# test binaries: every integration test of the workspace
cargo test --workspace --release --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"): continue
    t = msg["target"]
    if t["kind"] == ["test"] and t["name"] in ("corpus_run", "algorithms_run", "chelsea_run", "array_refs", "cross_crate", "nvrtc_check", "gpu_runtime", "differential", "graph_run"):
        shutil.copy(msg["executable"], ".gpu/test-" + t["name"])
'
cargo bench --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["bench"]:
        shutil.copy(msg["executable"], ".gpu/bench-" + msg["target"]["name"])
'
cargo build --release --bin kiln 2>/dev/null && cp "${CARGO_TARGET_DIR:-target}/release/kiln" .gpu/kiln
strip .gpu/* 2>/dev/null || true
ls -la .gpu
du -sh .gpu
