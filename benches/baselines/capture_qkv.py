#!/usr/bin/env python3
"""Capture one attention layer's Q/K/V of a causal LM into the safetensors layout Kiln reads.

Runs on the GPU machine, where PyTorch is; it needs no network and downloads nothing. The model
comes from one of two places:

  * (default) a small LLaMA-style causal LM (RMSNorm, RoPE, grouped-query attention, SwiGLU)
    that this script trains itself, byte-level, for --minutes on a local text corpus: the files
    named by --text (globs; e.g. a folder of books or code), or, without --text, the Python
    standard library's own source files (bundled with every Python install, about 30 MB of
    text). --save-weights keeps the trained model; --weights loads such a file instead of
    training (a state dict of this same architecture, same --layers/--heads/... flags).
  * --hf-model DIR: a Hugging Face causal LM from a local folder (LLaMA, Mistral, Qwen2 and
    other models whose attention has q_proj/k_proj/v_proj and a rotary embedding), loaded with
    local_files_only=True; needs the `transformers` package.

The capture is one layer's attention inputs on held-out text (never trained on), **after RoPE,
before the softmax**, in the layout of `kiln_algorithms::workload` and
`kiln_algorithms::hata::train::capture_file`:

  "q" [batch, heads,    S_q, head_dim]   (the last S_q positions; S_q = --q-rows, default S)
  "k" [batch, kv_heads, S,   head_dim]
  "v" [batch, kv_heads, S,   head_dim]

(BF16 by default, --dtype f32 or f16 otherwise; query row r sits at position S - S_q + r). The
same file feeds both commands:

  kiln hata train --data layer.safetensors --out w.safetensors      # trains W on Q/K
  kiln fidelity --data layer.safetensors --weights w.safetensors    # HATA + Chelsea reports

(for a fair HATA report, train W on one capture and report on another: --seed picks the held-out
text windows, e.g. --seed 1 for the training capture, --seed 2 for the report).

Usage:
  python3 benches/baselines/capture_qkv.py --out layer.safetensors [--layer 4] [--seq 4096]
      [--batch 4] [--minutes 5] [--text 'corpus/*.txt'] [--save-weights tiny.pt]
  python3 benches/baselines/capture_qkv.py --out layer.safetensors --weights tiny.pt
  python3 benches/baselines/capture_qkv.py --out layer.safetensors --hf-model /models/llama-3.2-1b

Also: --all-layers writes OUT with the layer index before the suffix (layer.L03.safetensors).
"""

import argparse
import glob
import json
import math
import os
import struct
import sys
import sysconfig
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# safetensors writer (the format is an 8-byte little-endian header length, a JSON header of
# {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the raw little-endian bytes);
# written here so that the script needs nothing beyond PyTorch


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_safetensors(tensors, path, metadata=None):
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not F32, F16 or BF16")
        # reinterpret as bytes (bf16 has no numpy dtype, so go through int16/int32 views)
        if t.dtype == torch.float32:
            raw = t.view(torch.int32).numpy().astype("<i4").tobytes()
        else:
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)  # align the data to 8 bytes
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# corpus: bytes of local files, split into a training part and a held-out part


def read_corpus(patterns, limit_bytes):
    if patterns:
        files = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True)})
        source = "the files of --text"
    else:
        stdlib = sysconfig.get_paths()["stdlib"]
        files = sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True))
        source = f"the Python standard library ({stdlib})"
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        sys.exit(f"capture_qkv: no corpus files found in {source}")
    chunks, total = [], 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit_bytes:
            break
    data = b"\n".join(chunks)
    print(f"corpus: {len(data) / 1e6:.1f} MB from {len(chunks)} files of {source}", file=sys.stderr)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# ---------------------------------------------------------------------------------------------
# the small LLaMA-style model


def rope_tables(seq, dim, base, device):
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    t = torch.arange(seq, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # [S, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [S, D], the rotate-half convention
    return emb.cos(), emb.sin()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x, cos, sin):
    # x [B, H, S, D]; cos/sin [S, D]
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, d_model, heads, kv_heads, head_dim):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=False)
        self.captured = None  # set to a dict to receive this layer's q, k, v

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.captured is not None:
            self.captured["q"], self.captured["k"], self.captured["v"] = q, k, v
        rep = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, d_model, heads, kv_heads, head_dim, ffn):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model)
        self.attn = Attention(d_model, heads, kv_heads, head_dim)
        self.norm2 = nn.RMSNorm(d_model)
        self.gate = nn.Linear(d_model, ffn, bias=False)
        self.up = nn.Linear(d_model, ffn, bias=False)
        self.down = nn.Linear(ffn, d_model, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyLM(nn.Module):
    def __init__(self, layers, d_model, heads, kv_heads, head_dim, rope_base):
        super().__init__()
        self.embed = nn.Embedding(256, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, heads, kv_heads, head_dim, 4 * d_model) for _ in range(layers)
        )
        self.norm = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, 256, bias=False)
        self.head_dim, self.rope_base = head_dim, rope_base

    def forward(self, tokens):
        x = self.embed(tokens)
        cos, sin = rope_tables(tokens.shape[1], self.head_dim, self.rope_base, tokens.device)
        for blk in self.blocks:
            x = blk(x, cos.to(x.dtype), sin.to(x.dtype))
        return self.head(self.norm(x))


def train_tiny(model, data, args, device):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed + 1000)
    deadline = time.time() + 60.0 * args.minutes
    step, t0 = 0, time.time()
    warmup = 200
    model.train()
    while time.time() < deadline and (args.max_steps <= 0 or step < args.max_steps):
        starts = torch.randint(0, len(data) - args.train_seq - 1, (args.train_batch,), generator=gen)
        batch = torch.stack([data[s : s + args.train_seq + 1] for s in starts.tolist()]).to(device)
        lr = args.lr * min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(
                f"step {step:6d}  loss {loss.item():.3f} nats/byte  {time.time() - t0:6.0f} s",
                file=sys.stderr,
            )
        step += 1
    model.eval()
    return step


@torch.no_grad()
def capture_tiny(model, tokens, layers):
    """Runs the model on tokens [B, S]; returns {layer: {"q", "k", "v"}}."""
    caps = {}
    for l in layers:
        caps[l] = {}
        model.blocks[l].attn.captured = caps[l]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.device.type == "cuda"):
        model(tokens)
    for l in layers:
        model.blocks[l].attn.captured = None
    return caps


# ---------------------------------------------------------------------------------------------
# a Hugging Face model from a local folder


@torch.no_grad()
def capture_hf(path, tokens, layers, device):
    try:
        import transformers
    except ImportError:
        sys.exit("capture_qkv: --hf-model needs the `transformers` package")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, torch_dtype=torch.bfloat16
    ).to(device)
    model.eval()
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    decoder_layers = model.model.layers
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None:
        sys.exit("capture_qkv: this model has no model.rotary_emb; only RoPE models are supported")
    caps, hooks = {}, []
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand(tokens.shape[0], -1)

    def hook_for(l):
        attn = decoder_layers[l].self_attn

        def pre_hook(module, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            b, s, _ = x.shape
            q = attn.q_proj(x).view(b, s, heads, head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, s, kv_heads, head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, s, kv_heads, head_dim).transpose(1, 2)
            # models with per-head q/k norms (e.g. Qwen3) apply them before RoPE
            if hasattr(attn, "q_norm"):
                q = attn.q_norm(q.transpose(1, 2)).transpose(1, 2)
            if hasattr(attn, "k_norm"):
                k = attn.k_norm(k.transpose(1, 2)).transpose(1, 2)
            cos, sin = rotary(v, positions)  # [B, S, D], rotate-half convention
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            caps[l] = {"q": q, "k": k, "v": v}

        return attn.register_forward_pre_hook(pre_hook, with_kwargs=True)

    for l in layers:
        hooks.append(hook_for(l))
    model(tokens)
    for h in hooks:
        h.remove()
    if len(caps) != len(layers):
        sys.exit("capture_qkv: the attention hooks did not fire; is this a LLaMA-like model?")
    return caps


def held_out_tokens(data, batch, seq, seed, device):
    """batch windows of seq bytes from the held-out tail of the corpus (never trained on)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seq, (batch,), generator=gen)
    return torch.stack([data[s : s + seq] for s in starts.tolist()]).to(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the safetensors file to write")
    ap.add_argument("--layer", type=int, default=None, help="the layer to capture (default: the middle one)")
    ap.add_argument("--all-layers", action="store_true", help="write every layer, OUT.L<i>.safetensors")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per captured sequence")
    ap.add_argument("--batch", type=int, default=4, help="captured sequences")
    ap.add_argument("--q-rows", type=int, default=0, help="query rows kept per head (the last ones; 0: all)")
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--seed", type=int, default=1, help="seed of the held-out windows")
    ap.add_argument("--text", nargs="*", default=None, help="corpus files (globs); default: Python's stdlib")
    ap.add_argument("--corpus-mb", type=float, default=64.0, help="most corpus bytes read, in MB")
    ap.add_argument("--held-out", type=float, default=0.1, help="share of the corpus kept for capture")
    ap.add_argument("--hf-model", default=None, help="a local Hugging Face model folder instead of the tiny LM")
    ap.add_argument("--weights", default=None, help="load the tiny LM from this state dict instead of training")
    ap.add_argument("--save-weights", default=None, help="save the trained tiny LM here")
    # the tiny LM (head_dim 64 or 128 fits Kiln's kernels)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--minutes", type=float, default=5.0, help="training time of the tiny LM")
    ap.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps (0: time only)")
    ap.add_argument("--train-seq", type=int, default=1024)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    data = read_corpus(args.text, int(args.corpus_mb * 1e6))
    cut = int(len(data) * (1.0 - args.held_out))
    train_data, test_data = data[:cut], data[cut:]
    if len(test_data) <= args.seq:
        sys.exit(f"capture_qkv: the held-out text ({len(test_data)} bytes) is shorter than --seq {args.seq}")
    tokens = held_out_tokens(test_data, args.batch, args.seq, args.seed, device)
    meta = {"kiln.capture.seq": args.seq, "kiln.capture.seed": args.seed}

    if args.hf_model:
        # byte windows are not the model's tokens: re-tokenise the held-out text with its tokenizer
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(args.hf_model, local_files_only=True)
        text = bytes(test_data.to(torch.uint8).tolist()).decode("utf-8", errors="ignore")
        ids = tok(text, return_tensors="pt").input_ids[0]
        if len(ids) <= args.seq:
            sys.exit(f"capture_qkv: the held-out text has {len(ids)} tokens, fewer than --seq {args.seq}")
        tokens = held_out_tokens(ids, args.batch, args.seq, args.seed, device)
        cfg = transformers.AutoConfig.from_pretrained(args.hf_model, local_files_only=True)
        n_layers = cfg.num_hidden_layers
        meta["kiln.capture.model"] = os.path.basename(os.path.normpath(args.hf_model))
    else:
        model = TinyLM(args.layers, args.d_model, args.heads, args.kv_heads, args.head_dim, args.rope_base).to(device)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location=device))
            model.eval()
            meta["kiln.capture.model"] = f"tiny LM from {os.path.basename(args.weights)}"
        else:
            steps = train_tiny(model, train_data, args, device)
            meta["kiln.capture.model"] = f"tiny LM trained {steps} steps"
            if args.save_weights:
                torch.save(model.state_dict(), args.save_weights)
        n_layers = args.layers
        # held-out loss: how much the model learned (a flat model gives flat attention)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(tokens[:, :-1])
            nll = F.cross_entropy(logits.float().reshape(-1, 256), tokens[:, 1:].reshape(-1)).item()
        print(f"held-out loss {nll:.3f} nats/byte ({nll / math.log(2):.2f} bits/byte)", file=sys.stderr)
        meta["kiln.capture.heldout_nats_per_byte"] = f"{nll:.4f}"

    layers = list(range(n_layers)) if args.all_layers else [n_layers // 2 if args.layer is None else args.layer]
    if any(not 0 <= l < n_layers for l in layers):
        sys.exit(f"capture_qkv: --layer must lie in 0..{n_layers - 1}")
    caps = capture_hf(args.hf_model, tokens, layers, device) if args.hf_model else capture_tiny(model, tokens, layers)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    for l in layers:
        q, k, v = caps[l]["q"], caps[l]["k"], caps[l]["v"]
        if args.q_rows > 0:
            q = q[:, :, -args.q_rows :, :]
        out = args.out
        if args.all_layers:
            root, ext = os.path.splitext(args.out)
            out = f"{root}.L{l:02d}{ext or '.safetensors'}"
        tensors = {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype)}
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                sys.exit(f"capture_qkv: layer {l} {name} holds non-finite values")
        save_safetensors(tensors, out, dict(meta, **{"kiln.capture.layer": l}))
        print(
            f"layer {l}: q {list(q.shape)}, k/v {list(k.shape)} ({args.dtype}) -> {out}", file=sys.stderr
        )


if __name__ == "__main__":
    main()
