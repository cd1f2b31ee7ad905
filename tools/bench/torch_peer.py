#!/usr/bin/python3
"""PyTorch peer of multihead's training step, for a side-by-side tokens/s comparison.

Trains, in PyTorch on the CPU, exactly the model `multihead` trains for the same configuration
(src/model; the semantics of tests/reference/golden.py) on random token ids, and reports the time
of a full optimizer step. See tools/bench/README.md.

    /usr/bin/python3 tools/bench/torch_peer.py --d-model 256 --heads 4 --d-ff 1024 \
        --encoder-layers 3 --decoder-layers 3 --vocab 8000 --batch 64 --src-len 32 --tgt-len 32 \
        --steps 20 --warmup-steps 3 --threads 1 --json

Model (the semantics of src/model, written as the fastest reasonable PyTorch a user would write):
  * embedding: table[ids] * sqrt(d_model) + sinusoidal PE, then dropout;
  * post-LN (paper) layers: LN(x + Dropout(Sublayer(x))); pre-LN: x + Dropout(Sublayer(LN(x))),
    with a final LN after the encoder and after the decoder stack;
  * multi-head attention with separate q/k/v/o projections (nn.Linear, with bias), key-padding
    mask (pad id 0) and causal mask in the decoder's self-attention; no dropout on the attention
    probabilities (multihead has none);
  * FFN fc2(act(fc1(x))), act = relu or exact-erf gelu;
  * shared embedding: one [vocab, d_model] matrix for source, target and the output projection
    (no bias); with --no-share-embeddings three separate matrices;
  * loss: F.cross_entropy(logits, labels, ignore_index=0, label_smoothing=ls), mean over tokens;
  * Adam(betas=(0.9, 0.98), eps=1e-9), lr = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

Attention implementation (--attention):
  * sdpa   F.scaled_dot_product_attention (torch >= 2.0); not in torch 1.13.
  * manual q @ kᵀ / sqrt(dk) + additive mask, softmax, @ v (explicit matmul + softmax).
  * mha    nn.MultiheadAttention(batch_first=True): a fused [3d, d] in_proj instead of separate
           q/k/v weights (same parameter count).
  * auto   (default) sdpa when torch has it, otherwise manual. On torch 1.13 CPU, manual and
           nn.MultiheadAttention measured the same within noise for fwd+bwd (d 256, 4 heads,
           32 tokens; attention is a few per cent of the step, which is GEMM-bound), and manual
           keeps multihead's separate q/k/v weights.

Output: one human-readable line; with --json, also ONE JSON line (the last line of stdout).
"""

import argparse
import ctypes
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0
FIRST_REAL_ID = 4  # ids 0..3: pad, bos, eos, unk


def sinusoidal_pe(length, d):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(length, dtype=torch.float64).view(-1, 1)
    div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(length, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div)
    return pe.float()


def attn_mask(key_pad, lq, causal):
    """Additive float mask [B, 1, Lq, Lk] (0 or -inf): keys that are padding, and with causal keys
    j > i. key_pad: bool [B, Lk], True where the key is padding."""
    b, lk = key_pad.shape
    masked = key_pad.view(b, 1, 1, lk).expand(b, 1, lq, lk)
    if causal:
        fut = torch.ones(lq, lk, dtype=torch.bool, device=key_pad.device).triu(1)
        masked = masked | fut.view(1, 1, lq, lk)
    return torch.zeros(masked.shape, dtype=torch.float32, device=key_pad.device).masked_fill(
        masked, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention, q/k/v/o projections with bias; head h owns columns h*dk:(h+1)*dk."""

    def __init__(self, d, heads, impl):
        super().__init__()
        self.d, self.heads, self.dk, self.impl = d, heads, d // heads, impl
        if impl == "mha":
            self.mha = nn.MultiheadAttention(d, heads, dropout=0.0, bias=True, batch_first=True)
        else:
            self.q_proj = nn.Linear(d, d)
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
            self.o_proj = nn.Linear(d, d)

    def forward(self, xq, xkv, key_pad, causal, mask):
        """mask: the additive [B, 1, Lq, Lk] mask (manual), or None; key_pad: bool [B, Lk]."""
        b, lq, d = xq.shape
        lk = xkv.shape[1]
        if self.impl == "mha":
            causal_mask = None
            if causal:
                causal_mask = torch.ones(lq, lk, dtype=torch.bool, device=xq.device).triu(1)
            out, _ = self.mha(xq, xkv, xkv, key_padding_mask=key_pad, attn_mask=causal_mask,
                              need_weights=False)
            return out
        q = self.q_proj(xq).view(b, lq, self.heads, self.dk).transpose(1, 2)  # [B, H, Lq, dk]
        k = self.k_proj(xkv).view(b, lk, self.heads, self.dk).transpose(1, 2)
        v = self.v_proj(xkv).view(b, lk, self.heads, self.dk).transpose(1, 2)
        if self.impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            # baddbmm-style: scale folded into q, mask added, softmax, @ v.
            scores = torch.matmul(q * (1.0 / math.sqrt(self.dk)), k.transpose(-1, -2)) + mask
            o = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(o.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Module):
    def __init__(self, d, d_ff, activation):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)
        self.act = F.relu if activation == "relu" else F.gelu  # F.gelu: the exact erf form

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.pre = a.norm == "pre"
        self.p = a.dropout
        self.self_attn = Attention(a.d_model, a.heads, a.attention)
        self.self_attn_norm = nn.LayerNorm(a.d_model, eps=a.norm_eps)
        self.ffn = FeedForward(a.d_model, a.d_ff, a.activation)
        self.ffn_norm = nn.LayerNorm(a.d_model, eps=a.norm_eps)

    def forward(self, x, src_pad, src_mask):
        drop = lambda t: F.dropout(t, self.p, self.training)  # noqa: E731
        if self.pre:
            n = self.self_attn_norm(x)
            x = x + drop(self.self_attn(n, n, src_pad, False, src_mask))
            return x + drop(self.ffn(self.ffn_norm(x)))
        x = self.self_attn_norm(x + drop(self.self_attn(x, x, src_pad, False, src_mask)))
        return self.ffn_norm(x + drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.pre = a.norm == "pre"
        self.p = a.dropout
        self.self_attn = Attention(a.d_model, a.heads, a.attention)
        self.self_attn_norm = nn.LayerNorm(a.d_model, eps=a.norm_eps)
        self.cross_attn = Attention(a.d_model, a.heads, a.attention)
        self.cross_attn_norm = nn.LayerNorm(a.d_model, eps=a.norm_eps)
        self.ffn = FeedForward(a.d_model, a.d_ff, a.activation)
        self.ffn_norm = nn.LayerNorm(a.d_model, eps=a.norm_eps)

    def forward(self, y, mem, tgt_pad, tgt_mask, src_pad, cross_mask):
        drop = lambda t: F.dropout(t, self.p, self.training)  # noqa: E731
        if self.pre:
            n = self.self_attn_norm(y)
            y = y + drop(self.self_attn(n, n, tgt_pad, True, tgt_mask))
            y = y + drop(self.cross_attn(self.cross_attn_norm(y), mem, src_pad, False, cross_mask))
            return y + drop(self.ffn(self.ffn_norm(y)))
        y = self.self_attn_norm(y + drop(self.self_attn(y, y, tgt_pad, True, tgt_mask)))
        y = self.cross_attn_norm(y + drop(self.cross_attn(y, mem, src_pad, False, cross_mask)))
        return self.ffn_norm(y + drop(self.ffn(y)))


class Stack(nn.Module):
    """`layers` and, with pre-LN, the final `norm`: parameter names encoder.layers.{i}.*,
    encoder.norm.* as multihead names them (see ARCHITECTURE.md)."""

    def __init__(self, layers, a):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(a.d_model, eps=a.norm_eps) if a.norm == "pre" else None


class Transformer(nn.Module):
    """named_parameters() gives multihead's names (embed.weight, encoder.layers.0.self_attn.
    q_proj.weight, ...), so a multihead checkpoint maps onto it one to one."""

    def __init__(self, a):
        super().__init__()
        self.a = a
        d, v = a.d_model, a.vocab
        if a.share_embeddings:
            self.embed = nn.Embedding(v, d)
        else:
            self.src_embed = nn.Embedding(v, d)
            self.tgt_embed = nn.Embedding(v, d)
            self.out_proj = nn.Linear(d, v, bias=False)
        self.encoder = Stack([EncoderLayer(a) for _ in range(a.encoder_layers)], a)
        self.decoder = Stack([DecoderLayer(a) for _ in range(a.decoder_layers)], a)
        self.register_buffer("pe", sinusoidal_pe(max(a.src_len, a.tgt_len), d), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        """multihead's init: embeddings N(0, d^-1/2), matrices Xavier-uniform, biases 0, LN 1/0."""
        for name, p in self.named_parameters():
            if p.dim() == 2 and ("embed" in name or name == "out_proj.weight"):
                nn.init.normal_(p, 0.0, self.a.d_model ** -0.5)
            elif p.dim() == 2:
                nn.init.xavier_uniform_(p)
            elif "norm" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def tables(self):
        if self.a.share_embeddings:
            w = self.embed.weight
            return w, w, w
        return self.src_embed.weight, self.tgt_embed.weight, self.out_proj.weight

    def _embed(self, table, ids):
        x = F.embedding(ids, table) * math.sqrt(self.a.d_model) + self.pe[: ids.shape[1]]
        return F.dropout(x, self.a.dropout, self.training)

    def forward(self, src, tgt_in):
        src_t, tgt_t, out_t = self.tables()
        src_pad = src == PAD_ID  # [B, Ls]
        tgt_pad = tgt_in == PAD_ID  # [B, Lt]
        ls, lt = src.shape[1], tgt_in.shape[1]
        if self.a.attention == "mha":
            src_mask = tgt_mask = cross_mask = None
        else:
            src_mask = attn_mask(src_pad, ls, False)
            tgt_mask = attn_mask(tgt_pad, lt, True)
            cross_mask = attn_mask(src_pad, lt, False)
        x = self._embed(src_t, src)
        for layer in self.encoder.layers:
            x = layer(x, src_pad, src_mask)
        if self.encoder.norm is not None:
            x = self.encoder.norm(x)
        y = self._embed(tgt_t, tgt_in)
        for layer in self.decoder.layers:
            y = layer(y, x, tgt_pad, tgt_mask, src_pad, cross_mask)
        if self.decoder.norm is not None:
            y = self.decoder.norm(y)
        return F.linear(y.reshape(-1, self.a.d_model), out_t)  # [B*Lt, V], no bias


def expected_params(a):
    """multihead's count for the same config (the sanity check of the brief)."""
    d, ff, v = a.d_model, a.d_ff, a.vocab
    attn = 4 * (d * d + d)
    ln = 2 * d
    ffn = (d * ff + ff) + (ff * d + d)
    enc = attn + 2 * ln + ffn
    dec = enc + attn + ln
    n = (1 if a.share_embeddings else 3) * v * d + a.encoder_layers * enc + a.decoder_layers * dec
    if a.norm == "pre":
        n += 2 * ln
    return n


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--encoder-layers", type=int, default=3)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--tgt-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--norm", choices=["post", "pre"], default="post")
    p.add_argument("--norm-eps", type=float, default=1e-5)
    p.add_argument("--activation", choices=["relu", "gelu"], default="relu")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--share-embeddings", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lr-warmup", type=int, default=4000, help="warmup of the LR schedule")
    p.add_argument("--attention", choices=["auto", "sdpa", "manual", "mha"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model if available")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    a = p.parse_args(argv)
    if a.d_model % a.heads:
        p.error("--d-model must be a multiple of --heads")
    if a.steps < 1 or a.warmup_steps < 0:
        p.error("--steps >= 1, --warmup-steps >= 0")
    if a.vocab <= FIRST_REAL_ID:
        p.error(f"--vocab must exceed {FIRST_REAL_ID}")
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    if a.attention == "auto":
        a.attention = "sdpa" if has_sdpa else "manual"
    elif a.attention == "sdpa" and not has_sdpa:
        p.error(f"--attention sdpa: torch {torch.__version__} has no "
                "F.scaled_dot_product_attention (use manual or mha)")
    return a


def set_blas_threads(n):
    """torch.set_num_threads sets the OpenMP pool only; Debian's torch calls OpenBLAS (pthread
    build), whose own pool defaults to every core. Pin it too, so --threads 1 means one thread.
    Returns OpenBLAS's thread count, or None when it is not loaded."""
    try:
        ob = ctypes.CDLL("libopenblas.so.0")
        ob.openblas_set_num_threads(n)
        return int(ob.openblas_get_num_threads())
    except (OSError, AttributeError):
        return None


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    blas_threads = set_blas_threads(a.threads)
    torch.manual_seed(a.seed)
    model = Transformer(a)
    n_params = sum(p.numel() for p in model.parameters())
    want = expected_params(a)
    if n_params != want:
        print(f"error: {n_params} parameters, multihead would have {want}", file=sys.stderr)
        return 1
    model.train()

    step_fn_model = model
    compiled = False
    if a.compile:
        if hasattr(torch, "compile"):
            step_fn_model = torch.compile(model)
            compiled = True
        else:
            print(f"note: --compile: torch {torch.__version__} has no torch.compile; "
                  "running eager", file=sys.stderr)

    adam = dict(lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    try:  # multi-tensor Adam where this torch has it (1.13: foreach defaults to off)
        opt = torch.optim.Adam(model.parameters(), foreach=True, **adam)
    except TypeError:
        opt = torch.optim.Adam(model.parameters(), **adam)
    # lr = lr_at(step) with step counted from 1, like the paper.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: a.d_model ** -0.5 * min((i + 1) ** -0.5, (i + 1) * a.lr_warmup ** -1.5))

    g = torch.Generator().manual_seed(a.seed + 1)
    total = a.warmup_steps + a.steps
    # Random ids in [4, vocab), no padding; the decoder sees tgt[:, :-1], labels are tgt[:, 1:].
    srcs = [torch.randint(FIRST_REAL_ID, a.vocab, (a.batch, a.src_len), generator=g)
            for _ in range(total)]
    tgts = [torch.randint(FIRST_REAL_ID, a.vocab, (a.batch, a.tgt_len + 1), generator=g)
            for _ in range(total)]

    def step(i):
        src, tgt = srcs[i], tgts[i]
        opt.zero_grad(set_to_none=True)
        logits = step_fn_model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits, tgt[:, 1:].reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=a.label_smoothing)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    losses = []
    for i in range(a.warmup_steps):
        losses.append(float(step(i)))
    timed = []
    cpu0 = time.process_time()
    t_all = time.perf_counter()
    for i in range(a.warmup_steps, total):
        t0 = time.perf_counter()
        loss = step(i)
        timed.append(time.perf_counter() - t0)
        losses.append(loss.detach())
    elapsed = time.perf_counter() - t_all
    cpu_s = time.process_time() - cpu0
    losses = [float(x) for x in losses]

    step_s = elapsed / a.steps
    src_tok = a.batch * a.src_len
    tgt_tok = a.batch * a.tgt_len
    timed.sort()
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": a.threads,
        "steps": a.steps,
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_min": round(timed[0] * 1e3, 3),
        "step_ms_median": round(timed[len(timed) // 2] * 1e3, 3),
        # CPU time of this process per step: with cpu_ms/step_ms well under `threads`, the
        # machine was busy with something else and step_ms overstates the cost.
        "step_cpu_ms": round(cpu_s / a.steps * 1e3, 3),
        "tokens_per_s": round((src_tok + tgt_tok) / step_s, 1),
        "tgt_tokens_per_s": round(tgt_tok / step_s, 1),
        "params": n_params,
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "attention": a.attention,
        "compiled": compiled,
        "blas_threads": blas_threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "config": {
            "d_model": a.d_model, "heads": a.heads, "d_ff": a.d_ff,
            "encoder_layers": a.encoder_layers, "decoder_layers": a.decoder_layers,
            "vocab": a.vocab, "batch": a.batch, "src_len": a.src_len, "tgt_len": a.tgt_len,
            "norm": a.norm, "activation": a.activation, "dropout": a.dropout,
            "label_smoothing": a.label_smoothing, "share_embeddings": a.share_embeddings,
        },
    }
    print(f"pytorch {torch.__version__}  attn={a.attention}  threads={a.threads}  "
          f"params={n_params}  steps={a.steps}  step={res['step_ms']:.1f} ms "
          f"(min {res['step_ms_min']:.1f}, median {res['step_ms_median']:.1f}, "
          f"cpu {res['step_cpu_ms']:.1f})  "
          f"tokens/s={res['tokens_per_s']:.0f}  tgt tokens/s={res['tgt_tokens_per_s']:.0f}  "
          f"loss {res['loss_first']:.4f} -> {res['loss_last']:.4f}")
    if a.json:
        print(json.dumps(res, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
