#!/usr/bin/env python3
"""PyTorch baselines for Kiln's AdaCluster bench (runs on the GPU machine, no network).

Times, in bf16 with CUDA events (warm-up, then the median of >= 20 repetitions; successive runs
rotate between copies of the inputs that together exceed 512 MiB, so inputs come from device
memory rather than L2, as the Rust benches do):

  dense attention, what AdaCluster's cluster-sparse attention replaces: non-causal
    torch.nn.functional.scaled_dot_product_attention on q, k, v [B, H, S, D] (contiguous in that
    order, heads-major like AdaCluster's [P, N, D] problems), B = 1, at the video-model shapes
      cogvideox   H 30, S 17776,  D 64
      wan480p     H 12, S 32760,  D 128
      hunyuan720p H 24, S 119056, D 128
    The flash backend is forced (torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION));
    when it refuses a shape, the memory-efficient backend, then cuDNN, are tried, and the row
    records which one ran ("baseline": "torch-sdpa-flash" / "torch-sdpa-efficient" /
    "torch-sdpa-cudnn"); the refusals are kept in "refused". "tflops": 4*B*H*S*S*D flops.

  one k-means iteration written the obvious way, the baseline for Kiln's tensor-core k-means
    (kmeans_assign + the counting sort + cluster_update), on one problem (batch 1, one head):
    x [N, D] bf16 ~ N(0, 1), centroids [K, D] bf16 (K distinct rows of x), for (N, K, D) in
    (131072, 1024, 128), (32768, 256, 128), (119056, 1024, 128). Each shape gives two rows:
      "torch-cdist":     assign = torch.cdist(x, c).argmin(dim=1). bf16 is tried first; if cdist
                         refuses it, x and c are cast to f32 for cdist (the cast is timed) and the
                         row's "dtype" says "f32 (cdist refuses bf16)", its "refused" why;
      "torch-mm-argmin": assign = (||c||^2 - 2 x @ c.T).argmin(dim=1), the product a bf16 matmul
                         (cuBLAS accumulates in f32, rounds the [N, K] result to bf16; ||c||^2 and
                         the subtraction in f32): the fairer tensor-core baseline.
    The update, the same for both: sums = zeros([K, D], f32).index_add_(0, assign, x.float()),
    counts = torch.bincount(assign, minlength=K), centroids = sums / counts.clamp(min=1), an empty
    cluster keeping its old centroid, rounded to bf16 for the next assignment. (torch.bincount on
    CUDA reads the largest index back to the host, a device sync, which is timed too: it is part of
    the obvious way.) "median_ms" (and min, max) times the whole iteration, "assign_ms" and
    "update_ms" are medians of the two parts timed separately (the update on a fixed assignment).
    The rotated inputs are x and c; each rep does one iteration from its copy's centroids.

  one spherical k-means iteration ("torch-spherical"), for (131072, 1024, 128): x normalised to
    unit rows once, untimed (the data spherical k-means runs on), unit centroids; assign =
    (x @ c.T).argmax(dim=1) (bf16 matmul); update = the same sums and counts, centroids = the
    sums normalised to unit length (an empty cluster keeps its old centroid), rounded to bf16.

Shape names (the key the Rust bench looks rows up by):

  "adacluster {model} b{B} h{H} s{S} d{D}"   dense attention, e.g. "adacluster wan480p b1 h12 s32760 d128"
  "kmeans n{N} k{K} d{D}"                    k-means, "torch-mm-argmin" (distances by one bf16
                                             matmul, the fair tensor-core baseline)
  "kmeans n{N} k{K} d{D} cdist"              the same iteration with torch.cdist
  "kmeans n{N} k{K} d{D} spherical"          spherical k-means

Output: JSON {"bench": "adacluster-baseline", "device", "torch", "cuda", "warmup", "reps",
"hide_launch_latency", "rows": [...]}, rows
  attention: {"bench": "adacluster", "shape", "baseline", "median_ms", "min_ms", "max_ms",
             "tflops", "model", "b", "h", "s", "d", "causal" (false), "dtype" ("bf16"),
             "rotated_copies", "refused" (when a backend refused)}
  k-means:   {"bench": "adacluster-kmeans", "shape", "baseline", "median_ms", "min_ms", "max_ms",
             "assign_ms", "update_ms", "assign_tflops" (2*N*K*D flops / assign_ms), "n", "k",
             "d", "batch" (1), "spherical", "dtype" ("bf16", or "f32 (cdist refuses bf16)"),
             "rotated_copies", "refused" (when cdist refused bf16)}
A shape nothing runs is written with "median_ms": null and the "error".

Usage:
  python3 benches/baselines/adacluster.py [OUT]      # OUT: a .json file or a folder
                                                     # (default: $OUT, else bench-results)
  python3 benches/baselines/adacluster.py --list     # the shape names, without torch or a GPU
  python3 benches/baselines/adacluster.py --quick    # the cogvideox attention and the k-means
                                                     # n32768 k256 d128 shapes (smoke test)
  --warmup N (default 5), --reps N (default 30, at least 20 unless --quick),
  --hide-launch-latency: spin the GPU before each timed run so that the host's launch time is
  not counted (off by default, to time the way kiln_runtime::time does: events around one launch)
The file written in a folder is <folder>/adacluster-baseline-torch.json.
"""

import argparse
import json
import os
import statistics
import sys
import warnings

FILE_NAME = "adacluster-baseline-torch.json"
BACKEND_ORDER = ("flash", "efficient", "cudnn")
# Timed runs rotate between copies of the inputs totalling more than this (well above any L2),
# so every run reads from device memory: as ROTATE_BYTES in the Rust benches.
ROTATE_BYTES = 512 << 20
# GPU clock cycles to spin before each timed run with --hide-launch-latency (about 50 us)
SLEEP_CYCLES = 100_000

# (model, B, H, S, D) of the dense attention rows
ATTN_SHAPES = [
    ("cogvideox", 1, 30, 17776, 64),
    ("wan480p", 1, 12, 32760, 128),
    ("hunyuan720p", 1, 24, 119056, 128),
]
# (N, K, D) of the k-means rows
KMEANS_SHAPES = [
    (131072, 1024, 128),
    (32768, 256, 128),
    (119056, 1024, 128),
]
# (N, K, D) of the spherical k-means rows
SPHERICAL_SHAPES = [
    (131072, 1024, 128),
]


def attn_name(model, b, h, s, d):
    return f"adacluster {model} b{b} h{h} s{s} d{d}"


def kmeans_name(n, k, d, spherical=False):
    return f"kmeans n{n} k{k} d{d}" + (" spherical" if spherical else "")


def attn_flops(model, b, h, s, d):
    """4*B*H*S*S*D: QK^T and PV, non-causal."""
    return 4.0 * b * h * s * s * d


def copies(nbytes):
    """How many copies of a shape's inputs (nbytes) to rotate through: enough that together they
    exceed ROTATE_BYTES, at least 1 (one copy when a single one already exceeds it)."""
    return max(1, ROTATE_BYTES // max(nbytes, 1) + 1)


def output_path(arg):
    target = arg or os.environ.get("OUT") or "bench-results"
    if target.endswith(".json"):
        folder = os.path.dirname(target)
        if folder:
            os.makedirs(folder, exist_ok=True)
        return target
    os.makedirs(target, exist_ok=True)
    return os.path.join(target, FILE_NAME)


def first_line(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="a .json file or a folder (default: $OUT, else bench-results)")
    ap.add_argument("--list", action="store_true", help="print the shape names and exit (no torch needed)")
    ap.add_argument("--quick", action="store_true",
                    help="the cogvideox attention and the k-means n32768 k256 d128 shapes, for a smoke test")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (at least 20 unless --quick)")
    ap.add_argument("--hide-launch-latency", action="store_true",
                    help="spin the GPU before each timed run so the host's launch time is not "
                         "counted (by default, like kiln_runtime::time, events are recorded "
                         "around the launches, which counts them)")
    args = ap.parse_args()

    attn_todo = list(ATTN_SHAPES)
    kmeans_todo = list(KMEANS_SHAPES)
    spherical_todo = list(SPHERICAL_SHAPES)
    if args.list:
        for sh in attn_todo:
            print(attn_name(*sh))
        for sh in kmeans_todo:
            print(kmeans_name(*sh))
        for sh in spherical_todo:
            print(kmeans_name(*sh, spherical=True))
        return 0
    if args.quick:
        attn_todo = [sh for sh in ATTN_SHAPES if sh[0] == "cogvideox"]
        kmeans_todo = [(32768, 256, 128)]
        spherical_todo = []
    elif args.reps < 20:
        ap.error("--reps must be at least 20 (use --quick for a smoke test)")
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be at least 1 and --warmup at least 0")

    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"adacluster.py: PyTorch is not importable ({e}); no baseline written", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("adacluster.py: no CUDA device visible to PyTorch; no baseline written", file=sys.stderr)
        return 2

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    bf16 = torch.bfloat16

    def time_ms(fn):
        """fn(i) runs repetition i; warm-up, then the median of args.reps event-timed runs."""
        for i in range(args.warmup):
            fn(i)
        torch.cuda.synchronize()
        samples = []
        for i in range(args.reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            if args.hide_launch_latency:
                # keep the GPU busy while the host enqueues, so the events time only the kernels
                torch.cuda._sleep(SLEEP_CYCLES)
            start.record()
            fn(args.warmup + i)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples), min(samples), max(samples)

    # ---------------------------------------------------------------- dense attention

    def run_attention(model, b, h, s, d):
        gen = torch.Generator(device="cuda").manual_seed(0)
        # q, k, v rotated between copies (as the Rust benches do) so every timed run reads them
        # from device memory, not from L2
        n = copies(3 * 2 * b * h * s * d)

        def randn():
            return torch.randn(b, h, s, d, device="cuda", dtype=bf16, generator=gen)

        sets = [(randn(), randn(), randn()) for _ in range(n)]
        errors = []
        try:
            def call(i):
                q, k, v = sets[i % n]
                return F.scaled_dot_product_attention(q, k, v, is_causal=False)

            for name in BACKEND_ORDER:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel(backends[name]):
                            call(0)  # refuses here if the backend cannot run the shape
                            torch.cuda.synchronize()
                            med, lo, hi = time_ms(call)
                        return name, med, lo, hi, n, errors
                    except (RuntimeError, TypeError, ValueError) as e:
                        why = [str(w.message).splitlines()[0] for w in caught if str(w.message)]
                        errors.append(f"{name}: {first_line(e)}" + (f" ({'; '.join(why)})" if why else ""))
                        torch.cuda.synchronize()
            return None, None, None, None, n, errors
        finally:
            del sets
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- k-means

    def update(x, c, assign, spherical):
        """The centroid update written the obvious way: f32 sums by index_add_, counts by
        bincount, mean (or unit direction) per cluster; an empty cluster keeps its centroid."""
        k, d = c.shape
        sums = torch.zeros(k, d, device=x.device, dtype=torch.float32)
        sums.index_add_(0, assign, x.float())
        counts = torch.bincount(assign, minlength=k)
        if spherical:
            new = F.normalize(sums, dim=1)
        else:
            new = sums / counts.clamp(min=1).unsqueeze(1)
        return torch.where((counts > 0).unsqueeze(1), new, c.float()).to(x.dtype)

    def assign_cdist_bf16(x, c):
        return torch.cdist(x, c).argmin(dim=1)

    def assign_cdist_f32(x, c):
        return torch.cdist(x.float(), c.float()).argmin(dim=1)

    def assign_mm(x, c):
        # ||x - c||^2 - ||x||^2 = ||c||^2 - 2 x.c; the product a bf16 matmul (f32 accumulation
        # in cuBLAS), ||c||^2 and the subtraction in f32
        cc = c.float().pow(2).sum(1)
        return torch.sub(cc, x @ c.T, alpha=2).argmin(dim=1)

    def assign_spherical(x, c):
        return (x @ c.T).argmax(dim=1)

    def run_kmeans(n_pts, k, d, spherical):
        """Rows for one shape: [(baseline, dtype, med, lo, hi, assign_ms, update_ms, refused,
        error)], and the number of rotated copies."""
        gen = torch.Generator(device="cuda").manual_seed(0)
        n = copies(2 * (n_pts * d + k * d))
        sets = []
        for _ in range(n):
            x = torch.randn(n_pts, d, device="cuda", dtype=torch.float32, generator=gen)
            if spherical:
                x = F.normalize(x, dim=1)  # once, untimed: the data spherical k-means runs on
            x = x.to(bf16)
            c = x[torch.randperm(n_pts, device="cuda", generator=gen)[:k]].clone()
            sets.append((x, c))
        torch.cuda.synchronize()

        if spherical:
            variants = [("torch-spherical", [("bf16", assign_spherical)])]
        else:
            variants = [
                ("torch-cdist", [("bf16", assign_cdist_bf16),
                                 ("f32 (cdist refuses bf16)", assign_cdist_f32)]),
                ("torch-mm-argmin", [("bf16", assign_mm)]),
            ]
        out = []
        try:
            for baseline, attempts in variants:
                refused = []
                assign_fn, dtype = None, None
                for dt, fn in attempts:
                    try:
                        x0, c0 = sets[0]
                        fn(x0, c0)  # refuses here if this dtype cannot run
                        torch.cuda.synchronize()
                        assign_fn, dtype = fn, dt
                        break
                    except (RuntimeError, TypeError, ValueError) as e:
                        refused.append(f"{dt.split()[0]}: {first_line(e)}")
                        torch.cuda.synchronize()
                if assign_fn is None:
                    out.append((baseline, None, None, None, None, None, None, refused, "; ".join(refused)))
                    continue
                try:
                    def iteration(i, fn=assign_fn):
                        x, c = sets[i % n]
                        return update(x, c, fn(x, c), spherical)

                    def assign_only(i, fn=assign_fn):
                        x, c = sets[i % n]
                        return fn(x, c)

                    iteration(0)
                    torch.cuda.synchronize()
                    med, lo, hi = time_ms(iteration)
                    assign_ms = time_ms(assign_only)[0]
                    assigned = [assign_fn(x, c) for (x, c) in sets]  # fixed, for the update alone

                    def update_only(i):
                        x, c = sets[i % n]
                        return update(x, c, assigned[i % n], spherical)

                    update_ms = time_ms(update_only)[0]
                    del assigned
                    out.append((baseline, dtype, med, lo, hi, assign_ms, update_ms, refused, None))
                except (RuntimeError, TypeError, ValueError) as e:
                    torch.cuda.synchronize()
                    out.append((baseline, dtype, None, None, None, None, None, refused, first_line(e)))
            return out, n
        finally:
            del sets
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- rows

    rows = []
    for sh in attn_todo:
        model, b, h, s, d = sh
        name = attn_name(*sh)
        backend, med, lo, hi, n_copies, errors = run_attention(*sh)
        row = {
            "bench": "adacluster",
            "shape": name,
            "baseline": f"torch-sdpa-{backend}" if backend else "torch-sdpa",
            "median_ms": med,
            "min_ms": lo,
            "max_ms": hi,
            "model": model, "b": b, "h": h, "s": s, "d": d, "causal": False,
            "dtype": "bf16",
            "rotated_copies": n_copies,
        }
        if errors:
            row["refused"] = errors
        if med is None:
            row["error"] = "; ".join(errors)
            print(f"{name:<44} failed: {row['error']}", flush=True)
        else:
            row["tflops"] = attn_flops(*sh) / (med * 1e-3) / 1e12
            print(f"{name:<44} {med:9.4f} ms {row['tflops']:8.1f} TFLOP/s  [{row['baseline']}]", flush=True)
        rows.append(row)

    kmeans_jobs = [(sh, False) for sh in kmeans_todo] + [(sh, True) for sh in spherical_todo]
    for (n_pts, k, d), spherical in kmeans_jobs:
        name = kmeans_name(n_pts, k, d, spherical)
        try:
            results, n_copies = run_kmeans(n_pts, k, d, spherical)
        except (RuntimeError, TypeError, ValueError) as e:  # e.g. out of memory making the inputs
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = "torch-spherical" if spherical else "torch-cdist"
            results, n_copies = [(base, None, None, None, None, None, None, [], first_line(e))], None
        for baseline, dtype, med, lo, hi, assign_ms, update_ms, refused, error in results:
            row = {
                "bench": "adacluster-kmeans",
                "shape": name + " cdist" if baseline == "torch-cdist" else name,
                "baseline": baseline,
                "median_ms": med,
                "min_ms": lo,
                "max_ms": hi,
                "assign_ms": assign_ms,
                "update_ms": update_ms,
                "n": n_pts, "k": k, "d": d, "batch": 1, "spherical": spherical,
                "dtype": dtype,
                "rotated_copies": n_copies,
            }
            if refused:
                row["refused"] = refused
            if med is None:
                row["error"] = error or "no time"
                print(f"{name:<44} failed: {row['error']}  [{baseline}]", flush=True)
            else:
                row["assign_tflops"] = 2.0 * n_pts * k * d / (assign_ms * 1e-3) / 1e12
                print(f"{name:<44} {med:9.4f} ms (assign {assign_ms:.4f}, update {update_ms:.4f})"
                      f"  [{baseline}, {dtype}]", flush=True)
            rows.append(row)

    out = {
        "bench": "adacluster-baseline",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "warmup": args.warmup,
        "reps": args.reps,
        "hide_launch_latency": args.hide_launch_latency,
        "rows": rows,
    }
    path = output_path(args.out)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
