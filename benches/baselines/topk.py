#!/usr/bin/env python3
"""PyTorch top-k baseline for Kiln's top-k bench (benches/topk.rs; runs on the GPU machine, no network).

Times torch.topk(x, k, dim=1) on float32 scores x [rows, n] with CUDA events (warm-up, then the
median of >= 50 repetitions; successive runs rotate between copies of x that together exceed
512 MiB, so every run reads x from device memory rather than L2, as the Rust bench does), twice
per shape:

  sorted=False  ("baseline": "torch-topk", shape "topk r{rows} n{n} k{k}"): like Kiln's, whose
                output is in index order, not sorted by value; the like-for-like comparison;
  sorted=True   ("baseline": "torch-topk-sorted", shape "topk r{rows} n{n} k{k} sorted"):
                torch.topk's default.

Shapes (the order and names of shapes() in benches/topk.rs): the headline 64 x 131072, k = 2048,
then rows in (8, 64) x n in (32768, 131072, 262144) x k in (512, 2048, 1.6% of n rounded to
nearest: (16 n + 500) // 1000), without repeating the headline. Scores are uniform in [-1, 1)
(torch.topk's time hardly depends on them).

Output: JSON {"bench": "topk-baseline", "device", "torch", "cuda", "warmup", "reps", "rows": [
{"bench": "topk", "shape", "baseline", "median_ms", "min_ms", "max_ms", "rows", "n", "k",
"sorted", "gbps" (rows*n*4 bytes read), "rotated_copies"}]}. A shape that fails is written with
"median_ms": null and the "error".

Usage:
  python3 benches/baselines/topk.py OUT.json     # or a folder (file topk-baseline-torch.json);
                                                 # default: $OUT, else bench-results
  python3 benches/baselines/topk.py --list       # the shape names, without torch or a GPU
  python3 benches/baselines/topk.py --quick      # the headline shape only (smoke test)
Point KILN_TOPK_BASELINE_JSON at the file for `cargo bench --bench topk`.
"""

import argparse
import json
import os
import statistics
import sys

FILE_NAME = "topk-baseline-torch.json"
# Timed runs rotate between copies of the input totalling more than this (as rotations() in
# benches/support/mod.rs), so every run reads device memory, not L2.
ROTATE_BYTES = 512 << 20


def k_ratio(n):
    """1.6% of n, rounded to nearest; as k_ratio in benches/topk.rs."""
    return (n * 16 + 500) // 1000


def shapes():
    """(rows, n, k) in the order of shapes() in benches/topk.rs."""
    v = [(64, 131072, 2048)]
    for rows in (8, 64):
        for n in (32768, 131072, 262144):
            for k in (512, 2048, k_ratio(n)):
                if (rows, n, k) not in v:
                    v.append((rows, n, k))
    return v


def shape_name(rows, n, k, sorted_=False):
    """The shape's name; must match shape_name in benches/topk.rs (plus " sorted")."""
    return f"topk r{rows} n{n} k{k}" + (" sorted" if sorted_ else "")


def copies(nbytes):
    """Copies of a shape's input to rotate through: enough to exceed ROTATE_BYTES, 1 to 16."""
    return max(1, min(16, -(-ROTATE_BYTES // max(nbytes, 1))))


def output_path(arg):
    target = arg or os.environ.get("OUT") or "bench-results"
    if target.endswith(".json"):
        folder = os.path.dirname(target)
        if folder:
            os.makedirs(folder, exist_ok=True)
        return target
    os.makedirs(target, exist_ok=True)
    return os.path.join(target, FILE_NAME)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="a .json file or a folder (default: $OUT, else bench-results)")
    ap.add_argument("--list", action="store_true", help="print the shape names and exit (no torch needed)")
    ap.add_argument("--quick", action="store_true", help="the headline shape only, for a smoke test")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=100, help="timed repetitions (at least 50 unless --quick)")
    args = ap.parse_args()

    todo = shapes()
    if args.list:
        for sh in todo:
            print(shape_name(*sh))
            print(shape_name(*sh, sorted_=True))
        return 0
    if args.quick:
        todo = todo[:1]
    elif args.reps < 50:
        ap.error("--reps must be at least 50 (use --quick for a smoke test)")

    try:
        import torch
    except ImportError as e:
        print(f"topk.py: PyTorch is not importable ({e}); no baseline written", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("topk.py: no CUDA device visible to PyTorch; no baseline written", file=sys.stderr)
        return 2

    def time_ms(fn):
        """fn(i) runs repetition i; warm-up, then the median of args.reps event-timed runs."""
        for i in range(args.warmup):
            fn(i)
        torch.cuda.synchronize()
        samples = []
        for i in range(args.reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(args.warmup + i)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples), min(samples), max(samples)

    rows_out = []
    for (rows, n, k) in todo:
        nbytes = rows * n * 4
        n_copies = copies(nbytes)
        gen = torch.Generator(device="cuda").manual_seed(0)
        xs = [torch.rand(rows, n, device="cuda", dtype=torch.float32, generator=gen) * 2 - 1
              for _ in range(n_copies)]
        for sorted_ in (False, True):
            name = shape_name(rows, n, k, sorted_)
            row = {
                "bench": "topk",
                "shape": name,
                "baseline": "torch-topk-sorted" if sorted_ else "torch-topk",
                "rows": rows, "n": n, "k": k, "sorted": sorted_,
                "dtype": "f32",
                "rotated_copies": n_copies,
            }
            try:
                def call(i):
                    return torch.topk(xs[i % n_copies], k, dim=1, sorted=sorted_)

                call(0)
                torch.cuda.synchronize()
                med, lo, hi = time_ms(call)
                row.update({"median_ms": med, "min_ms": lo, "max_ms": hi,
                            "gbps": nbytes / (med * 1e-3) / 1e9})
                print(f"{name:<36} {med:9.4f} ms {row['gbps']:8.1f} GB/s  [{row['baseline']}]", flush=True)
            except (RuntimeError, ValueError) as e:
                row.update({"median_ms": None, "error": str(e).splitlines()[0] if str(e) else type(e).__name__})
                print(f"{name:<36} failed: {row['error']}", flush=True)
                torch.cuda.synchronize()
            rows_out.append(row)
        del xs
        torch.cuda.empty_cache()

    out = {
        "bench": "topk-baseline",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "warmup": args.warmup,
        "reps": args.reps,
        "rows": rows_out,
    }
    path = output_path(args.out)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
