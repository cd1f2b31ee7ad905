#!/usr/bin/env python3
"""PyTorch peer of `multihead bench attention`: F.scaled_dot_product_attention with the flash
backend forced, on the bench's problems, with its FLOP count and its JSON keys.

Problems (the same as src/cli/bench_attention.cpp, from the same options):
  sweep      for each --head-dim, causal mode and --seq L: B = --tokens // L sequences of L
             tokens, H = --model-dim // head_dim heads, self-attention, no padding
  mt-packed  sentences of 10..100 tokens (the bench's generator, below) until --mt-tokens:
             PyTorch's public API has no varlen entry point for flash SDPA (flash_attn_varlen
             is internal), so this runs SDPA on nested tensors (jagged layout), which dispatches
             to flash's varlen kernel where the installed torch supports it; where it does not,
             the row says why and has no number
  mt-padded  the same sentences padded to the longest, WITHOUT a key-padding mask: flash SDPA
             takes no mask (an attn_mask forces another backend), so this times the padded
             shape (every padded position computed), not masked attention
Layout: Q, K, V, dO as [B, L, H, d] transposed to [B, H, L, d] (heads interleaved, as
multihead's projections; flash's native layout, no copies).
FLOPs (FlashAttention's count): forward 4·B·H·Lq·Lk·d, backward 2.5× forward, fwd+bwd 3.5×,
causal halved; mt rows count the real tokens (Σ L²) in both forms.
Timing: --warmup untimed iterations, then --iters of forward (autograd-recording, as in
training) then torch.autograd.grad, between CUDA events; the median per pass.

    python3 tools/bench/torch_attention_peer.py --head-dim 64 --seq 1024,2048,4096 --json

--json prints one JSON object per row with the bench's keys (case, dtype, head_dim, heads,
batch, seq, causal, tokens, dropout, pass, gflop) plus torch_flash_ms, torch_flash_tflops,
torch_form, so the two join on (case, dtype, head_dim, causal, seq, pass).
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

M64 = (1 << 64) - 1


def mt_lengths(tokens, seed):
    """The bench's translation batch: an LCG mod 2^64, length 10 + (x >> 33) % 91."""
    lens, x, total = [], seed & M64, 0
    while total < tokens:
        x = (x * 6364136223846793005 + 1442695040888963407) & M64
        lens.append(10 + (x >> 33) % 91)
        total += lens[-1]
    return lens


def flash_only():
    """A context forcing the flash backend (torch >= 2.3), or the older switch (2.0 - 2.2)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION), "sdpa_kernel(FLASH_ATTENTION)"
    except ImportError:
        return (torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False,
                                               enable_mem_efficient=False),
                "sdp_kernel(enable_flash only)")


def parse_list(text):
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1024,2048: {text}")
    return out


def time_fwd_bwd(fwd, bwd, warmup, iters):
    """fwd() returns what bwd(out) differentiates; medians in ms of fwd, bwd and their sum."""
    for _ in range(warmup):
        bwd(fwd())
    ev = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(iters)]
    for e in ev:
        e[0].record()
        out = fwd()
        e[1].record()
        bwd(out)
        e[2].record()
        del out
    torch.cuda.synchronize()
    f = [e[0].elapsed_time(e[1]) for e in ev]
    b = [e[1].elapsed_time(e[2]) for e in ev]
    return (statistics.median(f), statistics.median(b),
            statistics.median([x + y for x, y in zip(f, b)]))


def run_dense(batch, seq, heads, d, causal, dtype, dropout, gen, warmup, iters):
    """Dense [B, L, H, d] inputs viewed as [B, H, L, d]."""
    def leaf():
        return torch.randn(batch, seq, heads, d, device="cuda", dtype=dtype,
                           generator=gen).requires_grad_()
    xq, xk, xv = leaf(), leaf(), leaf()
    dout = torch.randn(batch, seq, heads, d, device="cuda", dtype=dtype,
                       generator=gen).transpose(1, 2)

    def fwd():
        return F.scaled_dot_product_attention(xq.transpose(1, 2), xk.transpose(1, 2),
                                              xv.transpose(1, 2), dropout_p=dropout,
                                              is_causal=causal)

    def bwd(out):
        torch.autograd.grad(out, (xq, xk, xv), dout)

    return time_fwd_bwd(fwd, bwd, warmup, iters)


def run_nested(lens, heads, d, causal, dtype, dropout, gen, warmup, iters):
    """Jagged nested tensors: [B, j, H, d] viewed as [B, H, j, d]."""
    total = sum(lens)
    offsets = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))],
                           device="cuda", dtype=torch.int64)

    def leaf():
        return torch.randn(total, heads, d, device="cuda", dtype=dtype,
                           generator=gen).requires_grad_()
    vq, vk, vv = leaf(), leaf(), leaf()
    dout_values = torch.randn(total, heads, d, device="cuda", dtype=dtype, generator=gen)
    dout = torch.nested.nested_tensor_from_jagged(dout_values, offsets).transpose(1, 2)

    def nt(v):
        return torch.nested.nested_tensor_from_jagged(v, offsets).transpose(1, 2)

    def fwd():
        return F.scaled_dot_product_attention(nt(vq), nt(vk), nt(vv), dropout_p=dropout,
                                              is_causal=causal)

    def bwd(out):
        torch.autograd.grad(out, (vq, vk, vv), dout)

    return time_fwd_bwd(fwd, bwd, warmup, iters)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--head-dim", type=parse_list, default=[64, 128])
    p.add_argument("--seq", type=parse_list, default=[128, 256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--causal", nargs="?", const="on", default="both",
                   choices=["both", "on", "off"])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--model-dim", type=int, default=2048)
    p.add_argument("--mt-tokens", type=int, default=25000)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=1, help="the translation lengths' seed")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    for d in a.head_dim:
        if a.model_dim % d:
            p.error(f"--model-dim {a.model_dim} is not a multiple of head dim {d}")
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    device = torch.cuda.get_device_name()
    ctx, backend = flash_only()
    gen = torch.Generator(device="cuda").manual_seed(1)
    modes = {"both": [False, True], "on": [True], "off": [False]}[a.causal]
    mt = mt_lengths(a.mt_tokens, a.seed) if a.mt_tokens > 0 else []

    problems = []  # (case, batch, seq, heads, d, causal, lens)
    for d in a.head_dim:
        heads = a.model_dim // d
        for causal in modes:
            for seq in a.seq:
                b = max(1, a.tokens // seq)
                problems.append(("sweep", b, seq, heads, d, causal, [seq] * b))
            if mt:
                for case in ("mt-packed", "mt-padded"):
                    problems.append((case, len(mt), max(mt), heads, d, causal, mt))

    if not a.json:
        print(f"# torch {torch.__version__} SDPA, {backend}, {device}, {a.dtype}, dropout "
              f"{a.dropout:g}; TFLOP/s, median of {a.iters} iterations (CUDA events)")
        print(f"{'# case':9s} {'d':>4s} {'causal':>6s} {'seq':>6s} {'batch':>6s} {'heads':>5s}"
              f"  {'pass':7s} {'GFLOP':>9s}  {'torch':>8s}  form")
    failed = False
    with ctx:
        for case, batch, seq, heads, d, causal, lens in problems:
            flops = 4.0 * heads * d * sum(l * l for l in lens) * (0.5 if causal else 1.0)
            form, note, t = "dense", None, (None, None, None)
            try:
                if case == "mt-packed":
                    form = "nested (jagged)"
                    t = run_nested(lens, heads, d, causal, dtype, a.dropout, gen, a.warmup,
                                   a.iters)
                else:
                    form = "dense" if case == "sweep" else "padded, no mask"
                    t = run_dense(batch, seq, heads, d, causal, dtype, a.dropout, gen,
                                  a.warmup, a.iters)
            except Exception as e:  # unsupported by this torch's flash path: say so, go on
                note = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                failed = failed or case != "mt-packed"
            torch.cuda.empty_cache()
            for name, mult, ms in (("fwd", 1.0, t[0]), ("bwd", 2.5, t[1]),
                                   ("fwd+bwd", 3.5, t[2])):
                tf = mult * flops / (ms * 1e-3) / 1e12 if ms else None
                if a.json:
                    row = {"bench": "attention", "impl": "torch-sdpa-flash", "case": case,
                           "dtype": a.dtype, "head_dim": d, "heads": heads, "batch": batch,
                           "seq": seq, "causal": causal, "tokens": sum(lens),
                           "dropout": a.dropout, "pass": name,
                           "gflop": round(mult * flops / 1e9, 3),
                           "torch_flash_ms": round(ms, 4) if ms else None,
                           "torch_flash_tflops": round(tf, 2) if tf else None,
                           "torch_form": form, "iters": a.iters, "device": device,
                           "torch": torch.__version__}
                    if note:
                        row["torch_note"] = note
                    print(json.dumps(row), flush=True)
                else:
                    cell = f"{tf:.1f}" if tf else "-"
                    print(f"{case:9s} {d:4d} {'yes' if causal else 'no':>6s} {seq:6d} "
                          f"{batch:6d} {heads:5d}  {name:7s} {mult * flops / 1e9:9.2f}  "
                          f"{cell:>8s}  {form}{'  (' + note + ')' if note else ''}",
                          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
