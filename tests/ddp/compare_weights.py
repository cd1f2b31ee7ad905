#!/usr/bin/env python3
"""Compares two safetensors files tensor by tensor (the data-parallel equivalence tests).

    compare_weights.py A.safetensors B.safetensors [--tol 1e-5] [--label NAME] [--top 5]

Both files must hold the same tensor names, shapes and dtypes. Prints, for the `--top` tensors
that differ most, the tensor's relative error ||a-b||/||b|| and its max relative error
max|a-b| / max|b|; then the global relative error over all parameters,
sqrt(sum ||a-b||^2) / sqrt(sum ||b||^2), which decides: exit 0 if it is <= --tol, 1 otherwise
(2 on unreadable or mismatched files).

Per-tensor errors are reported, not judged: Adam divides each gradient by its own running RMS,
so a tensor whose gradient is mathematically zero (e.g. an attention key bias: softmax is
invariant to adding a constant to every score) is updated by pure rounding noise, and its
per-tensor error can be large while the model is the same.

The format is parsed by hand (no safetensors package): 8-byte little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...},
then the raw little-endian data, offsets relative to the end of the header.
"""
import argparse
import json
import math
import struct
import sys

import numpy as np

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}


def load(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        sys.exit(f"compare_weights: {path}: cannot read ({e.strerror})")
    if len(raw) < 8:
        sys.exit(f"compare_weights: {path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        sys.exit(f"compare_weights: {path}: header length {n} exceeds the file")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        sys.exit(f"compare_weights: {path}: bad JSON header ({e})")
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype == "BF16":  # the high half of an F32
            u = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif dtype in DTYPES:
            arr = np.frombuffer(data[begin:end], dtype=DTYPES[dtype])
        else:
            sys.exit(f"compare_weights: {path}: {name}: unsupported dtype {dtype}")
        if arr.size != math.prod(shape):
            sys.exit(f"compare_weights: {path}: {name}: {arr.size} elements for shape {shape}")
        tensors[name] = (dtype, tuple(shape), arr.astype(np.float64))
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b", help="the reference (denominators are its norms)")
    ap.add_argument("--tol", type=float, default=1e-5, help="bound on the global relative error")
    ap.add_argument("--label", default="", help="names the comparison in the output")
    ap.add_argument("--top", type=int, default=5, help="tensors to list, largest error first")
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    label = f"{args.label}: " if args.label else ""
    if set(a) != set(b):
        sys.exit(f"compare_weights: {label}tensor names differ: only in {args.a}: "
                 f"{sorted(set(a) - set(b))[:5]}, only in {args.b}: {sorted(set(b) - set(a))[:5]}")
    rows = []
    diff2 = ref2 = 0.0
    for name in sorted(a):
        (da, sa, xa), (db, sb, xb) = a[name], b[name]
        if (da, sa) != (db, sb):
            sys.exit(f"compare_weights: {label}{name}: {da}{list(sa)} vs {db}{list(sb)}")
        if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
            sys.exit(f"compare_weights: {label}{name}: not finite")
        d = xa - xb
        d2, r2 = float(d @ d), float(xb @ xb)
        diff2 += d2
        ref2 += r2
        norm_rel = math.sqrt(d2 / r2) if r2 > 0 else (0.0 if d2 == 0 else math.inf)
        big = float(np.max(np.abs(xb))) if xb.size else 0.0
        dmax = float(np.max(np.abs(d))) if d.size else 0.0
        max_rel = dmax / big if big > 0 else (0.0 if dmax == 0 else math.inf)
        rows.append((norm_rel, max_rel, name, xa.size))
    glob = math.sqrt(diff2 / ref2) if ref2 > 0 else (0.0 if diff2 == 0 else math.inf)
    rows.sort(reverse=True)
    print(f"{label}{args.a} vs {args.b}: {len(rows)} tensors, "
          f"{sum(r[3] for r in rows)} values")
    for norm_rel, max_rel, name, size in rows[:args.top]:
        print(f"  {name:48s} rel {norm_rel:.3e}  max rel {max_rel:.3e}  ({size} values)")
    worst_max = max(rows, key=lambda r: r[1])
    verdict = "ok" if glob <= args.tol else "FAIL"
    print(f"{label}global relative error {glob:.3e} (tolerance {args.tol:g}): {verdict}; "
          f"largest per-tensor max rel {worst_max[1]:.3e} ({worst_max[2]})")
    return 0 if glob <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
