#!/usr/bin/env bash
# Builds the release test and bench binaries that need a GPU and copies them, stripped, into
# .gpu/ (ignored by git). Then, on a GPU machine, from the repository root:
#   bash scripts/gpu-run.sh [MODE]     # GPU tests with KILN_REQUIRE_GPU=1, then the benches
# With the `device` tool: run `bash scripts/gpu-run.sh MODE` with carry [".gpu"].
#   bash scripts/gpu-bundle.sh [MODE]  # MODE as for gpu-run.sh (default all): only the
#                                      # binaries that mode runs, so that the bundle stays
#                                      # under the device's 64 MiB carry limit (all of them
#                                      # together are larger)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what="${1:-all}"
tests="corpus_run algorithms_run chelsea_run array_refs cross_crate nvrtc_check gpu_runtime differential graph_run"
benches=""
case "$what" in
  all) benches="*" ;;
  tests) ;;
  benches) tests=""; benches="*" ;;
  decode) tests=""; benches="hata topk chelsea" ;;
  adacluster) tests="algorithms_run"; benches="adacluster" ;;
  bigmac) tests=""; benches="bigmac" ;;
  pat) tests="algorithms_run"; benches="pat" ;;
  *) echo "usage: $0 [all|tests|benches|decode|adacluster|bigmac|pat]" >&2; exit 2 ;;
esac
rm -rf .gpu && mkdir -p .gpu
# copy_artifacts KIND NAMES PREFIX: the compiler's executables of that target kind whose
# target name is in NAMES ("*": all), copied as .gpu/PREFIX<name>
copy_artifacts() {
  KIND="$1" NAMES="$2" PREFIX="$3" python3 -c '
import json, os, shutil, sys
kind, names, prefix = os.environ["KIND"], os.environ["NAMES"].split(), os.environ["PREFIX"]
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"): continue
    t = msg["target"]
    if t["kind"] == [kind] and (names == ["*"] or t["name"] in names):
        shutil.copy(msg["executable"], ".gpu/" + prefix + t["name"])
'
}
if [ -n "$tests" ]; then
  cargo test --workspace --release --no-run --message-format=json 2>/dev/null \
    | copy_artifacts test "$tests" test-
fi
if [ -n "$benches" ]; then
  if [ "$benches" = "*" ]; then
    cargo bench --no-run --message-format=json 2>/dev/null | copy_artifacts bench "*" bench-
  else
    args=()
    for b in $benches; do args+=(--bench "$b"); done
    cargo bench "${args[@]}" --no-run --message-format=json 2>/dev/null \
      | copy_artifacts bench "$benches" bench-
  fi
fi
cargo build --release --bin kiln 2>/dev/null && cp "${CARGO_TARGET_DIR:-target}/release/kiln" .gpu/kiln
strip .gpu/* 2>/dev/null || true
ls -la .gpu
size=$(du -sm .gpu | cut -f1)
echo "${size} MiB in .gpu"
if [ "$size" -ge 64 ]; then
  echo "more than the device's 64 MiB carry limit: bundle one mode at a time (see the top of this script)" >&2
fi
