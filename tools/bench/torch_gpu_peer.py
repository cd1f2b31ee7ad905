#!/usr/bin/env python3
"""PyTorch GPU peer of `multihead bench train` (CUDA, AMP bf16), and a GEMM TFLOP/s probe.

Two modes (see tools/bench/README.md and docs/gpu.md):

  train: trains, on one CUDA GPU, the model of tools/bench/torch_peer.py (imported from it: the
         semantics of src/model, multihead's parameter names and init) on random full-length
         batches, with what a PyTorch user would write for speed on a GPU:
           * autocast(bfloat16) (--precision bf16; fp32 master weights, fp32 loss), or fp32 with
             TF32 matmuls (--precision fp32);
           * F.scaled_dot_product_attention; since the benchmark batches have no padding the key
             padding masks are no-ops, so by default (--mask causal) no mask tensor is built:
             is_causal=True for decoder self-attention, no mask elsewhere, which lets PyTorch pick
             its flash / cuDNN kernels (--mask additive keeps torch_peer's float masks);
           * fused Adam (torch.optim.Adam(fused=True)), eager or torch.compile (--compile).
         Reports step time (CUDA-synchronized wall clock over the timed steps), tokens/s (source +
         target, as `multihead bench train`), and model FLOP utilization against the card's
         dense bf16 peak when the card is known.

  gemm:  TFLOP/s of torch.matmul on random bf16 / fp32 (TF32) matrices, timed with CUDA events
         (median of --iters after warm-up, all enqueued before one synchronization so the GPU
         never waits for Python, rotating among input sets larger than L2 when they fit), for
         the shapes given (MxNxK) or a default set (square and the paper-base step's).

    python3 tools/bench/torch_gpu_peer.py train --d-model 512 --heads 8 --d-ff 2048 \
        --encoder-layers 6 --decoder-layers 6 --vocab 37000 --batch 192 --src-len 64 \
        --tgt-len 64 --steps 20 --warmup-steps 5 --json [--compile]
    python3 tools/bench/torch_gpu_peer.py gemm --json

Each mode prints human-readable lines and, with --json, one JSON line per result (the last
line(s) of stdout).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peer  # noqa: E402  (the model: same semantics as src/model)

# Dense (no sparsity) peak TFLOP/s by card name, from the vendors' datasheets (SXM parts): leads
# for MFU, not measurements.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0,
                    "A10G": 125.0}


def card_peak(name):
    for key, tf in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tf
    return None


# --- train --------------------------------------------------------------------------------------


def sdpa_forward(self, xq, xkv, key_pad, causal, mask):
    """torch_peer.Attention.forward with SDPA, and with mask None: is_causal where causal."""
    b, lq, d = xq.shape
    lk = xkv.shape[1]
    q = self.q_proj(xq).view(b, lq, self.heads, self.dk).transpose(1, 2)
    k = self.k_proj(xkv).view(b, lk, self.heads, self.dk).transpose(1, 2)
    v = self.v_proj(xkv).view(b, lk, self.heads, self.dk).transpose(1, 2)
    if mask is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.o_proj(o.transpose(1, 2).reshape(b, lq, d))


def forward_no_mask(self, src, tgt_in):
    """torch_peer.Transformer.forward without building masks (batches without padding)."""
    src_t, tgt_t, out_t = self.tables()
    x = self._embed(src_t, src)
    for layer in self.encoder.layers:
        x = layer(x, None, None)
    if self.encoder.norm is not None:
        x = self.encoder.norm(x)
    y = self._embed(tgt_t, tgt_in)
    for layer in self.decoder.layers:
        y = layer(y, x, None, None, None, None)
    if self.decoder.norm is not None:
        y = self.decoder.norm(y)
    return F.linear(y.reshape(-1, self.a.d_model), out_t)


def train_flops_per_step(a):
    """Matrix FLOPs of one training step (forward + backward = 3 x forward), counting every
    GEMM (projections, FFN, the tied output projection) and attention's two batched products
    (causal counted in full, as multihead's flops_per_token does not halve it either)."""
    b, ls, lt, d, ff, v = a.batch, a.src_len, a.tgt_len, a.d_model, a.d_ff, a.vocab
    ts, tt = b * ls, b * lt  # source and target tokens
    attn_proj = 4 * 2 * d * d
    ffn = 2 * 2 * d * ff
    enc = a.encoder_layers * (ts * (attn_proj + ffn) + 2 * 2 * b * ls * ls * d)
    dec_self = tt * attn_proj + 2 * 2 * b * lt * lt * d
    dec_cross = tt * 2 * 2 * d * d + ts * 2 * 2 * d * d + 2 * 2 * b * lt * ls * d
    dec = a.decoder_layers * (dec_self + dec_cross + tt * ffn)
    out = tt * 2 * d * v
    return 3.0 * (enc + dec + out)


def run_train(a):
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    if a.mask == "causal":
        torch_peer.Transformer.forward = forward_no_mask
    torch_peer.Attention.forward = sdpa_forward
    a.attention = "sdpa"
    model = torch_peer.Transformer(a).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    want = torch_peer.expected_params(a)
    if n_params != want:
        print(f"error: {n_params} parameters, multihead would have {want}", file=sys.stderr)
        return 1
    model.train()
    fwd = torch.compile(model) if a.compile else model

    adam = dict(lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    try:
        opt = torch.optim.Adam(model.parameters(), fused=True, **adam)
        fused = True
    except (TypeError, RuntimeError):
        opt = torch.optim.Adam(model.parameters(), foreach=True, **adam)
        fused = False
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: a.d_model ** -0.5 * min((i + 1) ** -0.5, (i + 1) * a.lr_warmup ** -1.5))

    g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    # One batch, reused every step (as `multihead bench train` does): random ids in [4, vocab).
    src = torch.randint(torch_peer.FIRST_REAL_ID, a.vocab, (a.batch, a.src_len), generator=g)
    tgt = torch.randint(torch_peer.FIRST_REAL_ID, a.vocab, (a.batch, a.tgt_len + 1), generator=g)
    src, tgt = src.to(dev), tgt.to(dev)
    tgt_in, labels = tgt[:, :-1].contiguous(), tgt[:, 1:].reshape(-1).contiguous()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = fwd(src, tgt_in)
            loss = F.cross_entropy(logits.float(), labels, ignore_index=torch_peer.PAD_ID,
                                   label_smoothing=a.label_smoothing)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    t_warm = time.perf_counter()
    first = None
    for _ in range(a.warmup_steps):
        loss = step()
        if first is None:
            first = float(loss)
    sync()
    warm_s = time.perf_counter() - t_warm
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    round_s = []  # each round's wall time; the median round is reported, as multihead does
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        sync()
        round_s.append(time.perf_counter() - t0)
    secs = sorted(round_s)[len(round_s) // 2]
    last = float(loss)
    if first is None:
        first = last

    step_s = secs / a.steps
    tokens = a.batch * (a.src_len + a.tgt_len)
    flops = train_flops_per_step(a)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = card_peak(name)
    tflops = flops / step_s / 1e12
    res = {
        "impl": "pytorch", "torch": torch.__version__, "device": name,
        "precision": a.precision, "compiled": bool(a.compile), "mask": a.mask,
        "fused_adam": fused, "steps": a.steps, "warmup_s": round(warm_s, 2),
        "rounds": a.rounds,
        "rounds_tokens_per_s": [round(a.batch * (a.src_len + a.tgt_len) * a.steps / r, 1)
                                for r in round_s],
        "step_ms": round(step_s * 1e3, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "tgt_tokens_per_s": round(a.batch * a.tgt_len / step_s, 1),
        "model_tflops_per_s": round(tflops, 2),
        "mfu": round(tflops / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "params": n_params, "loss_first": round(first, 5), "loss_last": round(last, 5),
        "config": {"d_model": a.d_model, "heads": a.heads, "d_ff": a.d_ff,
                   "encoder_layers": a.encoder_layers, "decoder_layers": a.decoder_layers,
                   "vocab": a.vocab, "batch": a.batch, "src_len": a.src_len,
                   "tgt_len": a.tgt_len},
    }
    print(f"pytorch {torch.__version__} {name} {a.precision} "
          f"{'compile' if a.compile else 'eager'}: {res['step_ms']:.2f} ms/step, "
          f"{res['tokens_per_s']:.0f} tokens/s, {tflops:.1f} TFLOP/s"
          + (f" (MFU {100 * res['mfu']:.1f}%)" if peak else "")
          + f", loss {first:.4f} -> {last:.4f}, warm-up {warm_s:.1f} s")
    if a.json:
        print(json.dumps(res, separators=(",", ":")), flush=True)
    return 0


# --- gemm ---------------------------------------------------------------------------------------


def parse_shape(text):
    m, n, k = (int(x) for x in text.lower().split("x"))
    return m, n, k


def run_gemm(a):
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    shapes = [parse_shape(s) for s in a.shapes] if a.shapes else [
        (8192, 8192, 8192), (4096, 4096, 4096),
        # paper-base step, 192 x 64 target tokens: FFN fc1, fc2, attention projection, logits
        (12288, 2048, 512), (12288, 512, 2048), (12288, 512, 512), (12288, 37000, 512)]
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    g = torch.Generator(device="cuda").manual_seed(a.seed)
    for dname in a.dtypes:
        dt = dtypes[dname]
        for (m, n, k) in shapes:
            per_set = (m * k + k * n + m * n) * torch.tensor([], dtype=dt).element_size()
            sets = max(1, min(8, math.ceil(3 * l2 / per_set)))
            if sets * per_set > 8 << 30:
                sets = 1
            xs = [torch.randn(m, k, device="cuda", dtype=dt, generator=g) for _ in range(sets)]
            ws = [torch.randn(k, n, device="cuda", dtype=dt, generator=g) for _ in range(sets)]
            outs = [torch.empty(m, n, device="cuda", dtype=dt) for _ in range(sets)]
            for i in range(a.warmup):
                torch.matmul(xs[i % sets], ws[i % sets], out=outs[i % sets])
            torch.cuda.synchronize()
            # All calls are enqueued before one synchronization, behind a ~20 ms spin that gives
            # Python a head start: the events then time the GPU's work, not the launch latency
            # of an idle GPU (multihead's bench gemm times the same way).
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(a.iters)]
            torch.cuda._sleep(40_000_000)
            for i, (s, e) in enumerate(ev):
                s.record()
                torch.matmul(xs[i % sets], ws[i % sets], out=outs[i % sets])
                e.record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) * 1e-3 for s, e in ev]
            med = statistics.median(times)
            tf = 2.0 * m * n * k / med / 1e12
            res = {"impl": "torch.matmul", "torch": torch.__version__, "device": name,
                   "dtype": dname + ("(tf32)" if dt == torch.float32 else ""),
                   "m": m, "n": n, "k": k, "ms_median": round(med * 1e3, 4),
                   "tflops": round(tf, 1), "input_sets": sets}
            print(f"torch.matmul {dname:5s} {m}x{n}x{k}: {med * 1e3:.3f} ms, {tf:.1f} TFLOP/s")
            if a.json:
                print(json.dumps(res, separators=(",", ":")), flush=True)
            del xs, ws, outs
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train", help="training tokens/s of the model on one GPU")
    t.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    t.add_argument("--mask", choices=["causal", "additive"], default="causal")
    t.add_argument("--device", default="cuda", help="torch device (cpu: a rehearsal only)")
    # torch_peer's own options (model, batch, steps, --compile, --json, ...).
    for action in _torch_peer_parser()._actions:
        if action.dest in ("help",) or action.dest in {x.dest for x in t._actions}:
            continue
        t._add_action(action)
    t.add_argument("--rounds", type=int, default=1,
                   help="time --steps this many times in a row; tokens/s is the median round's")
    t.set_defaults(steps=20, warmup_steps=5, attention="sdpa")
    gm = sub.add_parser("gemm", help="torch.matmul TFLOP/s")
    gm.add_argument("--shapes", nargs="*", help="MxNxK ... (default: a fixed set)")
    gm.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"],
                    choices=["bf16", "fp16", "fp32"])
    gm.add_argument("--iters", type=int, default=30)
    gm.add_argument("--warmup", type=int, default=5)
    gm.add_argument("--seed", type=int, default=1)
    gm.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.mode == "train":
        if a.d_model % a.heads:
            p.error("--d-model must be a multiple of --heads")
        if a.rounds < 1:
            p.error("--rounds must be >= 1")
        return run_train(a)
    return run_gemm(a)


def _torch_peer_parser():
    """torch_peer's argparse options, captured by running its parse_args on a stub parser."""
    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        captured["parser"] = self
        raise _Captured()

    argparse.ArgumentParser.parse_args = grab
    try:
        torch_peer.parse_args([])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return captured["parser"]


class _Captured(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
