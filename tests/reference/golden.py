#!/usr/bin/python3
"""Golden vectors for tests/unit/test_torch_reference.cpp, computed with PyTorch in float64.

Usage: /usr/bin/python3 tests/reference/golden.py OUTDIR

Writes OUTDIR/<case>.safetensors for every case below. Each file holds, all floats as F64 and
ids / lengths as I32:
  in.*            inputs (in.x, in.memory, in.src, in.labels, ...) and in.dy, the upstream grad
  <param name>    every parameter of the module, named as the C++ module names it
  out.*           forward outputs
  grad.<name>     gradients: grad.in.x (input grads) and grad.<param name> for every parameter
  __metadata__    the configuration the C++ side needs (sizes, norm, activation, eps, ...) plus
                  torch_f32_max_rel_err: the largest relative error (||a - b|| / ||b||) of the same
                  case run by PyTorch in float32 against its float64 result, for scale.

The model is written with plain torch ops (not nn.Transformer, whose layout differs) with the
exact semantics of the C++ modules; see the docstrings of the functions below. Weights are drawn
from a seeded generator with a deliberately non-trained scale (std 0.4 weights, 0.3 in the
whole-model cases; nonzero biases; LayerNorm affine away from (1, 0)) so that every parameter
influences the result.

One gradient is zero in exact arithmetic: k_proj.bias (it shifts every score of a query row by
the same amount, which softmax ignores). Its float64 value is roundoff, so it is stored as exact
zeros with metadata "denominator.<name>" naming the tensor whose norm scales its error (the same
projection's weight gradient).

If torch cannot be imported, prints a skip message, writes OUTDIR/SKIPPED with it (the C++ test
then skips with that message) and exits 0.
"""

import json
import math
import os
import struct
import sys
import zlib

try:  # Debian's python3-torch, installed for /usr/bin/python3
    import torch
    import torch.nn.functional as F
    import numpy  # tensor bytes for the writer
    IMPORT_ERROR = None
except ImportError as e:  # main() reports it and writes the skip marker
    numpy = torch = F = None
    IMPORT_ERROR = e

SKIP_MARKER = "SKIPPED"
SUFFIX = ".safetensors"

# --------------------------------------------------------------------------------------------
# safetensors, by hand: u64 LE header length, JSON header padded with spaces to a multiple of 8,
# then the raw little-endian data in header order.


def save_safetensors(path, tensors, metadata):
    """tensors: list of (name, torch tensor float64 / int32); metadata: dict str -> str."""
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.detach().contiguous().cpu()
        if t.dtype == torch.float64:
            dtype, fmt = "F64", "<f8"
        elif t.dtype == torch.int32:
            dtype, fmt = "I32", "<i4"
        else:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        data = t.numpy().astype(fmt).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The model, in plain torch ops. P: dict name -> parameter tensor.


def linear(P, name, x):
    """y = x Wᵀ + b, W [out, in]."""
    return x @ P[name + ".weight"].t() + P[name + ".bias"]


def layer_norm(P, name, x, eps):
    return F.layer_norm(x, (x.shape[-1],), P[name + ".weight"], P[name + ".bias"], eps)


def activation(kind, x):
    if kind == "relu":
        return F.relu(x)
    if kind == "gelu":
        return F.gelu(x)  # exact erf form
    raise ValueError(kind)


def ffn(P, name, x, act):
    """fc2(act(fc1(x))); no dropout."""
    return linear(P, name + ".fc2", activation(act, linear(P, name + ".fc1", x)))


def mha(P, name, x_q, x_kv, key_len, causal, heads):
    """Multi-head attention. x_q [B, Lq, D], x_kv [B, Lk, D], key_len [B] (keys j >= key_len[b]
    masked), causal (keys j > i masked). Head h owns columns h*dk:(h+1)*dk of q, k, v and of the
    concatenated output. Padded query rows are computed like any other."""
    B, Lq, D = x_q.shape
    Lk = x_kv.shape[1]
    dk = D // heads
    q = linear(P, name + ".q_proj", x_q).view(B, Lq, heads, dk).transpose(1, 2)  # [B, H, Lq, dk]
    k = linear(P, name + ".k_proj", x_kv).view(B, Lk, heads, dk).transpose(1, 2)
    v = linear(P, name + ".v_proj", x_kv).view(B, Lk, heads, dk).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dk)  # [B, H, Lq, Lk]
    j = torch.arange(Lk)
    masked = j.view(1, 1, Lk) >= key_len.long().view(B, 1, 1)  # [B, 1, Lk]
    masked = masked.expand(B, Lq, Lk)
    if causal:
        i = torch.arange(Lq)
        masked = masked | (j.view(1, Lk) > i.view(Lq, 1)).view(1, Lq, Lk)
    scores = scores.masked_fill(masked.view(B, 1, Lq, Lk), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    out = (p @ v).transpose(1, 2).reshape(B, Lq, D)
    return linear(P, name + ".o_proj", out)


def encoder_layer(P, name, x, src_len, cfg):
    """post: h = LN(x + SA(x)); y = LN(h + FFN(h)).  pre: h = x + SA(LN(x)); y = h + FFN(LN(h))."""
    H, eps, act = cfg["heads"], cfg["norm_eps"], cfg["activation"]
    if cfg["norm"] == "post":
        h = layer_norm(P, name + ".self_attn_norm",
                       x + mha(P, name + ".self_attn", x, x, src_len, False, H), eps)
        return layer_norm(P, name + ".ffn_norm", h + ffn(P, name + ".ffn", h, act), eps)
    n = layer_norm(P, name + ".self_attn_norm", x, eps)
    h = x + mha(P, name + ".self_attn", n, n, src_len, False, H)
    return h + ffn(P, name + ".ffn", layer_norm(P, name + ".ffn_norm", h, eps), act)


def decoder_layer(P, name, x, memory, tgt_len, src_len, cfg):
    """Causal self-attention (keys: tgt_len), cross-attention over memory (keys: src_len), FFN;
    post- or pre-LN like the encoder. In pre-LN, memory itself is not normalized here."""
    H, eps, act = cfg["heads"], cfg["norm_eps"], cfg["activation"]
    sa, ca = name + ".self_attn", name + ".cross_attn"
    if cfg["norm"] == "post":
        h1 = layer_norm(P, name + ".self_attn_norm", x + mha(P, sa, x, x, tgt_len, True, H), eps)
        h2 = layer_norm(P, name + ".cross_attn_norm",
                        h1 + mha(P, ca, h1, memory, src_len, False, H), eps)
        return layer_norm(P, name + ".ffn_norm", h2 + ffn(P, name + ".ffn", h2, act), eps)
    n = layer_norm(P, name + ".self_attn_norm", x, eps)
    h1 = x + mha(P, sa, n, n, tgt_len, True, H)
    h2 = h1 + mha(P, ca, layer_norm(P, name + ".cross_attn_norm", h1, eps), memory, src_len, False,
                  H)
    return h2 + ffn(P, name + ".ffn", layer_norm(P, name + ".ffn_norm", h2, eps), act)


def positional_encoding(length, d, dtype):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(length, dtype=torch.float64).view(-1, 1)
    div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(length, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div)
    return pe.to(dtype)


def embed(table, ids, d):
    """emb[ids] * sqrt(d_model) + PE[pos]."""
    return table[ids.long()] * math.sqrt(d) + positional_encoding(ids.shape[1], d, table.dtype)


def transformer_logits(P, I, cfg):
    """Logits [B * Lt, V] of the whole model."""
    shared = cfg["share_embeddings"]
    D = cfg["d_model"]
    src_table = P["embed.weight"] if shared else P["src_embed.weight"]
    tgt_table = P["embed.weight"] if shared else P["tgt_embed.weight"]
    out_table = P["embed.weight"] if shared else P["out_proj.weight"]
    x = embed(src_table, I["in.src"], D)
    for i in range(cfg["encoder_layers"]):
        x = encoder_layer(P, f"encoder.layers.{i}", x, I["in.src_len"], cfg)
    if cfg["norm"] == "pre":
        x = layer_norm(P, "encoder.norm", x, cfg["norm_eps"])
    y = embed(tgt_table, I["in.tgt_in"], D)
    for i in range(cfg["decoder_layers"]):
        y = decoder_layer(P, f"decoder.layers.{i}", y, x, I["in.tgt_len"], I["in.src_len"], cfg)
    if cfg["norm"] == "pre":
        y = layer_norm(P, "decoder.norm", y, cfg["norm_eps"])
    return (y @ out_table.t()).reshape(-1, out_table.shape[0])


def xent(logits, labels, pad_id, smoothing):
    """(loss_sum, nll_sum, tokens) with F.cross_entropy's semantics, summed over non-pad rows."""
    labels = labels.long().reshape(-1)
    loss_sum = F.cross_entropy(logits, labels, ignore_index=pad_id, label_smoothing=smoothing,
                               reduction="sum")
    nll_sum = F.cross_entropy(logits, labels, ignore_index=pad_id, reduction="sum")
    tokens = int((labels != pad_id).sum())
    return loss_sum, nll_sum, tokens


def xent_by_hand(logits, labels, pad_id, smoothing):
    """The same loss written out, to pin down F.cross_entropy's label-smoothing convention:
    per token (1 - eps) * (-log p_y) + eps * mean_c(-log p_c)."""
    labels = labels.long().reshape(-1)
    logp = logits.log_softmax(-1)
    keep = labels != pad_id
    nll = -logp.gather(1, labels.clamp(min=0).view(-1, 1)).view(-1)
    smooth = -logp.mean(-1)
    per = (1 - smoothing) * nll + smoothing * smooth
    return per[keep].sum()


# --------------------------------------------------------------------------------------------
# Cases. A case gives parameters, inputs and a function computing named outputs; the runner
# backpropagates either a random dy (per output named in `dy`) or a scalar named in `loss`.


class Case:
    def __init__(self, name, seed_name=None):
        self.name = name
        self.gen = torch.Generator().manual_seed(zlib.crc32((seed_name or name).encode()))
        self.params = {}  # name -> float64 tensor
        self.inputs = {}  # name -> tensor (float64 inputs get gradients, int32 do not)
        self.meta = {"case": name}
        self.fn = None  # (P, I) -> dict of outputs
        self.dy = {}  # output name -> upstream gradient name in inputs
        self.loss = None  # name of a scalar output to backpropagate instead of dy
        self.grad_inputs = []  # float inputs whose gradient is stored
        self.input_grad_names = {}  # input name -> stored grad name (default grad.<input>)
        self.extra = None  # (P, I, outs) -> dict of extra stored tensors
        self.weight_std = 0.4

    def randn(self, *shape, std=1.0):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64) * std

    def randint(self, lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=self.gen, dtype=torch.int64).to(torch.int32)

    # Parameters with a scale far from any trained init, so every one of them matters.
    def linear(self, name, n_in, n_out, bias=True):
        self.params[name + ".weight"] = self.randn(n_out, n_in, std=self.weight_std)
        if bias:
            self.params[name + ".bias"] = self.randn(n_out, std=0.2)

    def layernorm(self, name, d):
        self.params[name + ".weight"] = 1.0 + self.randn(d, std=0.2)
        self.params[name + ".bias"] = self.randn(d, std=0.2)

    def ffn(self, name, d, d_ff):
        self.linear(name + ".fc1", d, d_ff)
        self.linear(name + ".fc2", d_ff, d)

    def mha(self, name, d):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            self.linear(f"{name}.{p}", d, d)

    def encoder_layer(self, name, cfg):
        d = cfg["d_model"]
        self.mha(name + ".self_attn", d)
        self.layernorm(name + ".self_attn_norm", d)
        self.ffn(name + ".ffn", d, cfg["d_ff"])
        self.layernorm(name + ".ffn_norm", d)

    def decoder_layer(self, name, cfg):
        d = cfg["d_model"]
        self.mha(name + ".self_attn", d)
        self.layernorm(name + ".self_attn_norm", d)
        self.mha(name + ".cross_attn", d)
        self.layernorm(name + ".cross_attn_norm", d)
        self.ffn(name + ".ffn", d, cfg["d_ff"])
        self.layernorm(name + ".ffn_norm", d)

    def set_meta(self, **kw):
        for k, v in kw.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, float):
                v = repr(v)
            self.meta[k] = str(v)


def lengths(*ls):
    return torch.tensor(ls, dtype=torch.int32)


def padded_ids(case, lens, L, vocab, pad_id):
    """[B, L] i32: random non-pad tokens for t < len, pad_id after."""
    ids = case.randint(0, vocab - 1, len(lens), L)
    ids = torch.where(ids >= pad_id, ids + 1, ids)  # skip pad_id: real tokens are never pad
    t = torch.arange(L).view(1, L)
    return torch.where(t < lens.long().view(-1, 1), ids, torch.full_like(ids, pad_id))


def case_linear():
    c = Case("linear")
    n, d_in, d_out = 7, 5, 9
    c.set_meta(kind="linear", prefix="fc", in_features=d_in, out_features=d_out)
    c.linear("fc", d_in, d_out)
    c.inputs["in.x"] = c.randn(n, d_in)
    c.inputs["in.dy"] = c.randn(n, d_out)
    c.fn = lambda P, I: {"out.y": linear(P, "fc", I["in.x"])}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x"]
    return c


def case_layernorm():
    c = Case("layernorm")
    n, d, eps = 7, 10, 1e-3
    c.set_meta(kind="layernorm", prefix="norm", dim=d, eps=eps)
    c.layernorm("norm", d)
    # Small per-row variance and a row offset, so eps and the mean subtraction both matter.
    c.inputs["in.x"] = c.randn(n, d, std=0.1) + c.randn(n, 1, std=1.0)
    c.inputs["in.dy"] = c.randn(n, d)
    c.fn = lambda P, I: {"out.y": layer_norm(P, "norm", I["in.x"], eps)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x"]
    return c


def case_ffn(act):
    c = Case("ffn_" + act)
    n, d, d_ff = 7, 12, 20
    c.set_meta(kind="ffn", prefix="ffn", d_model=d, d_ff=d_ff, activation=act)
    c.ffn("ffn", d, d_ff)
    c.inputs["in.x"] = c.randn(n, d)
    c.inputs["in.dy"] = c.randn(n, d)
    c.fn = lambda P, I: {"out.y": ffn(P, "ffn", I["in.x"], act)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x"]
    return c


def case_attention_self(name, key_len, causal):
    """Self-attention: x is both queries and keys/values; grad.in.x is the sum of both paths."""
    c = Case(name)
    B, L, D, H = 3, 6, 12, 3
    c.set_meta(kind="attention", prefix="attn", d_model=D, heads=H, causal=causal,
               self_attention=True)
    c.mha("attn", D)
    c.inputs["in.x"] = c.randn(B, L, D)
    c.inputs["in.key_len"] = lengths(*key_len)
    c.inputs["in.dy"] = c.randn(B, L, D)
    c.fn = lambda P, I: {"out.y": mha(P, "attn", I["in.x"], I["in.x"], I["in.key_len"], causal,
                                      H)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x"]
    return c


def case_attention_cross():
    c = Case("attention_cross")
    B, Lq, Lk, D, H = 3, 5, 7, 12, 3
    c.set_meta(kind="attention", prefix="attn", d_model=D, heads=H, causal=False,
               self_attention=False)
    c.mha("attn", D)
    c.inputs["in.x"] = c.randn(B, Lq, D)
    c.inputs["in.memory"] = c.randn(B, Lk, D)
    c.inputs["in.key_len"] = lengths(3, 7, 5)
    c.inputs["in.dy"] = c.randn(B, Lq, D)
    c.fn = lambda P, I: {"out.y": mha(P, "attn", I["in.x"], I["in.memory"], I["in.key_len"],
                                      False, H)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x", "in.memory"]
    return c


def layer_cfg(norm, act, eps=1e-5):
    return {"d_model": 12, "heads": 3, "d_ff": 20, "norm": norm, "norm_eps": eps,
            "activation": act}


def case_encoder_layer(norm, act, eps):
    c = Case("encoder_layer_" + norm)
    cfg = layer_cfg(norm, act, eps)
    B, L, D = 3, 6, cfg["d_model"]
    prefix = "encoder.layers.0"
    c.set_meta(kind="encoder_layer", prefix=prefix, **cfg)
    c.encoder_layer(prefix, cfg)
    c.inputs["in.x"] = c.randn(B, L, D)
    c.inputs["in.src_len"] = lengths(4, 6, 1)
    c.inputs["in.dy"] = c.randn(B, L, D)
    c.fn = lambda P, I: {"out.y": encoder_layer(P, prefix, I["in.x"], I["in.src_len"], cfg)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x"]
    return c


def case_decoder_layer(norm, act, eps):
    c = Case("decoder_layer_" + norm)
    cfg = layer_cfg(norm, act, eps)
    B, Lt, Ls, D = 3, 5, 7, cfg["d_model"]
    prefix = "decoder.layers.0"
    c.set_meta(kind="decoder_layer", prefix=prefix, **cfg)
    c.decoder_layer(prefix, cfg)
    c.inputs["in.x"] = c.randn(B, Lt, D)
    c.inputs["in.memory"] = c.randn(B, Ls, D)
    c.inputs["in.tgt_len"] = lengths(5, 2, 4)
    c.inputs["in.src_len"] = lengths(3, 7, 6)
    c.inputs["in.dy"] = c.randn(B, Lt, D)
    c.fn = lambda P, I: {"out.y": decoder_layer(P, prefix, I["in.x"], I["in.memory"],
                                                I["in.tgt_len"], I["in.src_len"], cfg)}
    c.dy = {"out.y": "in.dy"}
    c.grad_inputs = ["in.x", "in.memory"]
    return c


def case_model(name, norm, act, shared, eps, smoothing):
    """The whole model and its loss: mean label-smoothed xent over non-pad labels."""
    c = Case(name)
    # Four layers (six attention sublayers) deep, std 0.4 sharpens the softmaxes enough that the
    # q/k gradients lose digits in f32: PyTorch's own f32 error reaches 4e-5 for some seeds. At 0.3
    # it stays below 5e-6 over 20 seeds, so the 1e-5 f32 tolerance tests the code, not the
    # conditioning.
    c.weight_std = 0.3
    cfg = {"vocab_size": 19, "d_model": 16, "heads": 4, "d_ff": 24, "encoder_layers": 2,
           "decoder_layers": 2, "norm": norm, "norm_eps": eps, "activation": act,
           "share_embeddings": shared, "max_len": 16, "pad_id": 0}
    V, D = cfg["vocab_size"], cfg["d_model"]
    Ls, Lt = 7, 6  # batch of 3, from the lengths below
    c.set_meta(kind="model", label_smoothing=smoothing, **cfg)
    if shared:
        c.params["embed.weight"] = c.randn(V, D, std=0.4)
    else:
        c.params["src_embed.weight"] = c.randn(V, D, std=0.4)
        c.params["tgt_embed.weight"] = c.randn(V, D, std=0.4)
    for i in range(cfg["encoder_layers"]):
        c.encoder_layer(f"encoder.layers.{i}", cfg)
    for i in range(cfg["decoder_layers"]):
        c.decoder_layer(f"decoder.layers.{i}", cfg)
    if norm == "pre":
        c.layernorm("encoder.norm", D)
        c.layernorm("decoder.norm", D)
    if not shared:
        c.params["out_proj.weight"] = c.randn(V, D, std=0.4)
    pad = cfg["pad_id"]
    src_len, tgt_len = lengths(5, 7, 2), lengths(6, 3, 4)
    c.inputs["in.src"] = padded_ids(c, src_len, Ls, V, pad)
    c.inputs["in.src_len"] = src_len
    c.inputs["in.tgt_in"] = padded_ids(c, tgt_len, Lt, V, pad)
    c.inputs["in.tgt_len"] = tgt_len
    c.inputs["in.labels"] = padded_ids(c, tgt_len, Lt, V, pad)

    def fn(P, I):
        logits = transformer_logits(P, I, cfg)
        if logits.requires_grad:
            logits.retain_grad()
        loss_sum, nll_sum, tokens = xent(logits, I["in.labels"], pad, smoothing)
        return {"out.logits": logits, "out.loss": loss_sum / tokens, "out.loss_sum": loss_sum,
                "out.nll_sum": nll_sum}

    c.fn = fn
    c.loss = "out.loss"
    c.extra = lambda P, I, outs: {"grad.logits": outs["out.logits"].grad}
    c.set_meta(tokens=int((c.inputs["in.labels"] != pad).sum()))
    return c


def case_xent(name, smoothing, pad_id):
    """Backend::softmax_xent: sums over non-pad rows, dlogits = d(loss_sum * grad_scale)/dlogits
    with grad_scale = 1 / tokens."""
    c = Case(name)
    N, V = 9, 11
    c.inputs["in.logits"] = c.randn(N, V, std=2.0)
    labels = c.randint(0, V, N)
    labels[torch.tensor([2, 5, 6])] = pad_id  # pad rows, not at the end only
    labels[torch.tensor([0, 3])] = (pad_id + 1) % V  # make sure real labels exist
    c.inputs["in.labels"] = labels
    tokens = int((labels != pad_id).sum())
    grad_scale = 1.0 / tokens
    c.set_meta(kind="xent", pad_id=pad_id, label_smoothing=smoothing, tokens=tokens,
               grad_scale=grad_scale)

    def fn(P, I):
        loss_sum, nll_sum, _ = xent(I["in.logits"], I["in.labels"], pad_id, smoothing)
        by_hand = xent_by_hand(I["in.logits"], I["in.labels"], pad_id, smoothing)
        assert torch.allclose(loss_sum, by_hand, rtol=1e-5, atol=0), (loss_sum, by_hand)
        return {"out.loss_sum": loss_sum, "out.nll_sum": nll_sum,
                "out.scaled_loss": loss_sum * grad_scale}

    c.fn = fn
    c.loss = "out.scaled_loss"
    c.grad_inputs = ["in.logits"]
    c.input_grad_names = {"in.logits": "grad.logits"}
    return c


def all_cases():
    return [
        case_linear(),
        case_layernorm(),
        case_ffn("relu"),
        case_ffn("gelu"),
        case_attention_self("attention_self_padded", (6, 3, 1), causal=False),
        case_attention_self("attention_causal_padded", (2, 6, 4), causal=True),
        case_attention_cross(),
        case_encoder_layer("post", "relu", 1e-5),
        case_encoder_layer("pre", "gelu", 1e-6),
        case_decoder_layer("post", "gelu", 1e-5),
        case_decoder_layer("pre", "relu", 1e-6),
        case_model("model_post_shared_relu", "post", "relu", True, 1e-5, 0.1),
        case_model("model_pre_unshared_gelu", "pre", "gelu", False, 1e-6, 0.1),
        case_xent("xent_smooth", 0.1, 0),
        case_xent("xent_plain", 0.0, 3),
    ]


# --------------------------------------------------------------------------------------------
# Running a case: forward, backward, and the tensors to store.


def run(case, dtype):
    """Returns {stored name: tensor} for one precision."""
    P = {k: v.detach().to(dtype, copy=True).requires_grad_() for k, v in case.params.items()}
    I = {}
    for k, v in case.inputs.items():
        v = v.detach().to(dtype, copy=True) if v.is_floating_point() else v
        I[k] = v.requires_grad_() if k in case.grad_inputs else v
    outs = case.fn(P, I)
    if case.loss is not None:
        outs[case.loss].backward()
    else:
        names = list(case.dy)
        torch.autograd.backward([outs[n] for n in names], [I[case.dy[n]] for n in names])
    res = {k: v.detach() for k, v in outs.items()}
    for k in case.grad_inputs:
        res[case.input_grad_names.get(k, "grad." + k)] = I[k].grad
    for k, p in P.items():
        assert p.grad is not None, f"{case.name}: parameter {k} gets no gradient"
        res["grad." + k] = p.grad
    if case.extra is not None:
        res.update(case.extra(P, I, outs))
    return res


def structurally_zero(name):
    """Gradients that are zero in exact arithmetic: a key bias adds q·b_k to every score of a
    query row, and softmax ignores a per-row constant, so d(loss)/d(k_proj.bias) = 0. PyTorch's
    float64 value is roundoff (~1e-17), so a relative error against it means nothing. These are
    stored as exact zeros and compared against the scale of the same projection's weight grad:
    returns that tensor's name, or None."""
    if name.startswith("grad.") and name.endswith(".k_proj.bias"):
        return name[:-len("bias")] + "weight"
    return None


def rel_err(a, b, scale=None):
    """||a - b|| / ||b||, or / ||scale|| when given (for structurally zero b)."""
    d = (a.double() - b.double()).norm()
    n = (scale if scale is not None else b).double().norm()
    return float(d / n) if n > 0 else float(d)


def write_case(case, outdir):
    ref = run(case, torch.float64)
    f32 = run(case, torch.float32)
    meta = dict(case.meta)
    scales = {}
    for k in ref:
        s = structurally_zero(k)
        if s is not None:
            assert float(ref[k].norm()) < 1e-12 * float(ref[s].norm()), (k, ref[k].norm())
            ref[k] = torch.zeros_like(ref[k])
            scales[k] = s
            meta["denominator." + k] = s
    errs = {k: rel_err(f32[k], v, ref[scales[k]] if k in scales else None)
            for k, v in ref.items()}
    worst_name = max(errs, key=errs.get)
    worst = errs[worst_name]
    for k, v in ref.items():
        assert torch.isfinite(v).all(), f"{case.name}: {k} is not finite"
        assert v.norm() > 0 or k in scales, f"{case.name}: {k} is all zero"
    meta["torch_version"] = torch.__version__
    meta["torch_f32_max_rel_err"] = repr(worst)
    meta["torch_f32_worst_tensor"] = worst_name
    tensors = [(k, v) for k, v in case.inputs.items()]
    tensors += [(k, v) for k, v in case.params.items()]
    tensors += [(k, v.to(torch.float64)) for k, v in sorted(ref.items())]
    save_safetensors(os.path.join(outdir, case.name + SUFFIX), tensors, meta)
    print(f"  {case.name:<26} {len(tensors):3d} tensors   torch f32 vs f64: max rel err "
          f"{worst:.2e} ({worst_name})")


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    marker = os.path.join(outdir, SKIP_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    if IMPORT_ERROR is not None:
        msg = (f"PyTorch (with numpy) is not importable by {sys.executable} ({IMPORT_ERROR}); "
               f"golden files not written, the torch reference tests skip. Install python3-torch "
               f"to run them.")
        print("SKIP: " + msg)
        with open(marker, "w") as f:
            f.write(msg + "\n")
        return 0
    torch.set_num_threads(1)  # deterministic reductions; the cases are tiny
    print(f"golden.py: torch {torch.__version__}, numpy {numpy.__version__}, writing to {outdir}")
    for case in all_cases():
        write_case(case, outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
