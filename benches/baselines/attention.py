#!/usr/bin/env python3
"""PyTorch attention baseline for Kiln's attention benches (runs on the GPU machine, no network).

Times torch.nn.functional.scaled_dot_product_attention (SDPA) in bf16 with CUDA events (warm-up,
then the median of >= 20 repetitions; successive runs rotate between copies of the inputs that
together exceed 512 MiB, so K and V come from device memory rather than L2, as in the Rust bench) for

  prefill: B=1, heads 32/32 and GQA 32/8, S in 4096, 8192, 16384, 32768, D in 64 and 128, causal and not;
  decode:  one query token, q [B, 32, 1, 128], K/V [B, 8, S, 128] (GQA 32/8, enable_gqa=True),
           S in 8K, 32K, 64K, 128K, 256K, B in 1 and 8.

The flash backend is forced (torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)); when
it refuses a shape, the memory-efficient backend, then cuDNN, are tried, and the row records which
one ran ("baseline": "torch-sdpa-flash" / "torch-sdpa-efficient" / "torch-sdpa-cudnn"); for GQA,
when none of them takes enable_gqa=True, the efficient backend on K/V repeated to 32 heads
("torch-sdpa-efficient-kvexpand", reading 4x the KV bytes). The refusals are kept in "refused". A
shape nothing runs is written with "median_ms": null and the "error".

Shape names (the key the Rust benches look rows up by; benches/support/baseline.rs builds the
same strings, and tests/bench_support.rs checks that the two agree):

  "prefill b{B} h{Hq}/{Hkv} s{S} d{D} causal"    or "... noncausal"
  "decode b{B} h{Hq}/{Hkv} s{S} d{D}"            (S = key length, in tokens: s32768, never 32K)

Output: JSON {"device", "torch", "cuda", "warmup", "reps", "rows": [{"bench", "shape",
"baseline", "median_ms", "min_ms", "max_ms", "tflops" (prefill: 4*B*Hq*S*S*D flops, halved when
causal) or "gbps" (decode: bytes of K and V), ...}]}.

Usage:
  python3 benches/baselines/attention.py [OUT]      # OUT: a .json file or a folder
                                                    # (default: $OUT, else bench-results)
  python3 benches/baselines/attention.py --list     # the shape names, without torch or a GPU
  python3 benches/baselines/attention.py --quick    # two shapes of each kind (smoke test)
  --hide-launch-latency: spin the GPU before each timed run so that the host's launch time is
  not counted (off by default, to time the way kiln_runtime::time does: events around one launch)
The file written in a folder is <folder>/attention-baseline-torch.json; point KILN_BASELINE_JSON
at it for the Rust benches.
"""

import argparse
import json
import os
import statistics
import sys
import warnings

FILE_NAME = "attention-baseline-torch.json"
BACKEND_ORDER = ("flash", "efficient", "cudnn")
# Timed runs rotate between copies of the inputs totalling more than this (well above any L2),
# so every run reads from device memory: as ROTATE_BYTES in benches/attention.rs.
ROTATE_BYTES = 512 << 20
# GPU clock cycles to spin before each timed run with --hide-launch-latency (about 50 us)
SLEEP_CYCLES = 100_000


def shape_name(kind, b, hq, hkv, s, d, causal=False):
    """The shape's name; must match AttnShape::name in benches/support/baseline.rs."""
    if kind == "decode":
        return f"decode b{b} h{hq}/{hkv} s{s} d{d}"
    mask = "causal" if causal else "noncausal"
    return f"prefill b{b} h{hq}/{hkv} s{s} d{d} {mask}"


def prefill_shapes():
    """(kind, b, hq, hkv, s, d, causal), in the order of prefill_shapes() in baseline.rs."""
    return [
        ("prefill", 1, hq, hkv, s, d, causal)
        for (hq, hkv) in ((32, 32), (32, 8))
        for s in (4096, 8192, 16384, 32768)
        for d in (64, 128)
        for causal in (True, False)
    ]


def decode_shapes():
    """(kind, b, hq, hkv, s, d, causal), in the order of decode_shapes() in baseline.rs."""
    return [
        ("decode", b, 32, 8, s, 128, False)
        for b in (1, 8)
        for s in (8192, 32768, 65536, 131072, 262144)
    ]


def flops(kind, b, hq, hkv, s, d, causal):
    """4*B*Hq*Sq*Skv*D (QK^T and PV), halved when causal; as AttnShape::flops."""
    sq = 1 if kind == "decode" else s
    f = 4.0 * b * hq * sq * s * d
    return f / 2 if causal else f


def kv_bytes(kind, b, hq, hkv, s, d, causal):
    """K and V, 2 bytes each: what a decode step must read (its GB/s); as AttnShape::kv_bytes."""
    return 2.0 * 2 * b * hkv * s * d


def copies(nbytes):
    """How many copies of a shape's inputs (nbytes) to rotate through: enough to exceed
    ROTATE_BYTES, 1 to 16; as copies() in benches/attention.rs."""
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
    ap.add_argument("--quick", action="store_true", help="two shapes of each kind, for a smoke test")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (at least 20 unless --quick)")
    ap.add_argument("--prefill", action="store_true",
                    help="only the prefill shapes (what `KILN_ATTN_ONLY=prefill` benches)")
    ap.add_argument("--hide-launch-latency", action="store_true",
                    help="spin the GPU before each timed run so the host's launch time is not "
                         "counted (by default, like kiln_runtime::time, events are recorded "
                         "around one launch, which counts it for kernels of a few microseconds)")
    args = ap.parse_args()

    shapes = prefill_shapes() + decode_shapes()
    if args.list:
        for sh in shapes:
            print(shape_name(*sh))
        return 0
    if args.quick:
        shapes = prefill_shapes()[:2] + decode_shapes()[:2]
    elif args.prefill:
        shapes = prefill_shapes()
    elif args.reps < 20:
        ap.error("--reps must be at least 20 (use --quick for a smoke test)")

    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"attention.py: PyTorch is not importable ({e}); no baseline written", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("attention.py: no CUDA device visible to PyTorch; no baseline written", file=sys.stderr)
        return 2

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }

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

    def run_shape(kind, b, hq, hkv, s, d, causal):
        sq = 1 if kind == "decode" else s
        gen = torch.Generator(device="cuda").manual_seed(0)
        # inputs rotated between copies (as the Rust bench does) so every timed run reads them
        # from device memory, not from L2
        kv_elems = b * hkv * s * d
        n = copies(2 * 2 * kv_elems if kind == "decode" else 2 * (b * hq * sq * d + 2 * kv_elems))

        def randn(*shape):
            # [B, S, H, D] in memory (how models keep activations and KV caches), viewed [B, H, S, D]
            return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)

        sets = [(randn(b, sq, hq, d), randn(b, s, hkv, d), randn(b, s, hkv, d)) for _ in range(n)]
        gqa = hq != hkv
        errors = []
        # (label, backend, repeat K/V heads in memory?)
        attempts = [(name, name, False) for name in BACKEND_ORDER]
        if gqa:
            # last resort where no backend takes enable_gqa: K/V heads repeated in memory
            # (reads Hq/Hkv times the bytes), what a PyTorch user would do without GQA support
            attempts.append(("efficient-kvexpand", "efficient", True))
        used = None
        try:
            for name, backend_name, expand in attempts:
                used = sets
                if expand:
                    used = [(q, k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1))
                            for (q, k, v) in sets]

                def call(i):
                    q, k, v = used[i % len(used)]
                    return F.scaled_dot_product_attention(
                        q, k, v, is_causal=causal, enable_gqa=gqa and not expand)

                backend = backends[backend_name]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel(backend):
                            call(0)  # refuses here if the backend cannot run the shape
                            torch.cuda.synchronize()
                            med, lo, hi = time_ms(call)
                        return name, med, lo, hi, n, errors
                    except (RuntimeError, TypeError, ValueError) as e:
                        why = [str(w.message).splitlines()[0] for w in caught if str(w.message)]
                        first = str(e).splitlines()[0] if str(e) else type(e).__name__
                        errors.append(f"{name}: {first}" + (f" ({'; '.join(why)})" if why else ""))
                        torch.cuda.synchronize()
            return None, None, None, None, n, errors
        finally:
            del sets, used
            torch.cuda.empty_cache()

    rows = []
    for sh in shapes:
        kind, b, hq, hkv, s, d, causal = sh
        name = shape_name(*sh)
        backend, med, lo, hi, n_copies, errors = run_shape(*sh)
        row = {
            "bench": f"attention-{kind}",
            "shape": name,
            "baseline": f"torch-sdpa-{backend}" if backend else "torch-sdpa",
            "median_ms": med,
            "min_ms": lo,
            "max_ms": hi,
            "b": b, "hq": hq, "hkv": hkv, "s": s, "d": d, "causal": causal,
            "dtype": "bf16",
            "rotated_copies": n_copies,
        }
        if errors:
            row["refused"] = errors
        if med is None:
            row["error"] = "; ".join(errors)
            print(f"{name:<40} failed: {row['error']}", flush=True)
        elif kind == "prefill":
            row["tflops"] = flops(*sh) / (med * 1e-3) / 1e12
            print(f"{name:<40} {med:9.4f} ms {row['tflops']:8.1f} TFLOP/s  [{row['baseline']}]", flush=True)
        else:
            row["gbps"] = kv_bytes(*sh) / (med * 1e-3) / 1e9
            print(f"{name:<40} {med:9.4f} ms {row['gbps']:8.1f} GB/s     [{row['baseline']}]", flush=True)
        rows.append(row)

    out = {
        "bench": "attention-baseline",
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
