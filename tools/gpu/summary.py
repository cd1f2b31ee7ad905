#!/usr/bin/env python3
"""The tables of a GPU check (tools/gpu/check.sh) from its results.jsonl.

    summary.py RESULTS [--full-table PATH] [--markdown]

check.sh prints them last (plain text) and writes the full attention sweep, every row, to
--full-table. After a run, `--markdown` prints the same tables as Markdown for docs/perf/gpu.md and
docs/perf/attention.md, so that numbers are pasted, not retyped. Python's standard library only
(it runs with the GPU machine's python3).

Every result line is a JSON object tagged by check.sh with its step ("step"); what each step's
lines hold is `multihead bench ... --json`'s and tools/bench/*_peer.py's output.
"""
import argparse
import json
import math
import sys


class Table:
    """Rows of strings under headers: the first column left-aligned, the others right."""

    def __init__(self, title, cols, unit=""):
        self.title, self.cols, self.unit = title, cols, unit
        self.rows, self.notes = [], []

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def text(self):
        head = self.cols
        w = [max(len(r[i]) for r in [head] + self.rows) for i in range(len(head))]
        fmt = lambda r: " ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))
        lines = [] if self.title == self.cols[0] else [self.title]
        lines += [fmt(head) + (f"  {self.unit}" if self.unit else "")]
        lines += [fmt(r) for r in self.rows] + self.notes
        return "\n".join(lines)

    def markdown(self):
        title = f"**{self.title}**" + (f" ({self.unit})" if self.unit else "")
        lines = [title, "", "| " + " | ".join(self.cols) + " |",
                 "| " + " | ".join(["---"] + ["---:"] * (len(self.cols) - 1)) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else []))


def num(x, fmt="{:.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) and x == x and x else "-"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def training(by):
    t = Table("model (bf16)", ["model (bf16)", "multihead tok/s", "torch eager", "torch.compile",
                               "mh/eager", "mh/compile", "MFU torch eager"])
    tok = lambda name: (by.get(name) or {}).get("tokens_per_s")
    for label, key in (("bench-small", "small"), ("paper-base", "base")):
        mh, te, tc = tok(f"mh_{key}_bf16"), tok(f"torch_{key}_eager"), tok(f"torch_{key}_compile")
        mfu = (by.get(f"torch_{key}_eager") or {}).get("mfu")
        t.add(label, num(mh, "{:,.0f}"), num(te, "{:,.0f}"), num(tc, "{:,.0f}"), ratio(mh, te),
              ratio(mh, tc), f"{100 * mfu:.1f}%" if mfu else "-")
    # Every round's tokens/s (the medians above), so the spread of the repeats is on record.
    for name in ("mh_small_bf16", "torch_small_eager", "torch_small_compile", "mh_base_bf16",
                 "torch_base_eager", "torch_base_compile"):
        rs = (by.get(name) or {}).get("rounds_tokens_per_s")
        if rs:
            t.notes.append(f"  {name:20s} rounds: " + " ".join(f"{x:,.0f}" for x in rs)
                           + f"  (spread {100 * (max(rs) - min(rs)) / max(rs):.1f}%)")
    return [t]


def profile(by):
    # Where multihead's paper-base step goes, op by op (bench train --profile: device time).
    prof = (by.get("mh_base_bf16") or {}).get("profile") or []
    if not prof:
        return []
    total = sum(r["ms"] for r in prof) or 1.0
    t = Table("paper-base bf16, per op", ["op", "ms/step", "share", "calls"])
    for r in prof[:12]:
        t.add(r["op"][:44], f"{r['ms']:.3f}", f"{100 * r['ms'] / total:.1f}%", f"{r['calls']:.1f}")
    t.add(f"all {len(prof)} ops", f"{total:.3f}", "", "")
    return [t]


def gemms(rows):
    # Joined on (dtype, m, n, k): torch.matmul, multihead's cuBLASLt (which layer and pass),
    # cublasGemmEx on multihead's buffers, multihead / torch, and the fused epilogue's speedup.
    key = lambda r: (r.get("dtype"), r.get("m"), r.get("n"), r.get("k"))
    torch_by = {key(r): r for r in rows if r.get("step") == "torch_gemm"}
    mh = [r for r in rows if r.get("step") == "mh_gemm"]
    if not (torch_by or mh):
        return []
    t = Table("GEMM", ["GEMM", "layer pass", "torch", "mh", "cuBLAS", "mh/torch", "fused"],
              "TFLOP/s")
    shape = lambda r: f"{r['dtype']} {r['m']}x{r['n']}x{r['k']}"
    ratios, seen = [], set()
    for r in mh:
        tr = torch_by.get(key(r))
        seen.add(key(r))
        q = r["tflops"] / tr["tflops"] if tr and r.get("tflops") and tr.get("tflops") else None
        if q:
            ratios.append(q)
        t.add(shape(r), f"{r['layer']} {r['pass']}", num(tr and tr.get("tflops")),
              num(r.get("tflops")), num(r.get("cublas_tflops")), num(q, "{:.2f}"),
              num(r.get("fused_speedup"), "{:.2f}x"))
    for k, tr in torch_by.items():
        if k not in seen:
            t.add(shape(tr), "-", num(tr.get("tflops")), "-", "-", "-", "-")
    if ratios:
        t.notes.append(f"multihead / torch.matmul over {len(ratios)} GEMMs: mean"
                       f" {sum(ratios) / len(ratios):.2f}, min {min(ratios):.2f}")
    return [t]


# Attention rows join on the problem: (case, dtype, head_dim, causal, seq, pass).
def akey(r):
    return (r["case"], r["dtype"], r["head_dim"], r["causal"], r["seq"], r["pass"])


def step_rows(rows, step):
    return {akey(r): r for r in rows if r.get("step") == step}


def attention(rows):
    s = {name: step_rows(rows, step) for name, step in (
        ("mh", "mh_attention"), ("torch", "torch_attention"), ("k128", "mh_attention_k128"),
        ("tiles", "mh_attention_bwd_tiles"), ("hop", "mh_attention_hopper"),
        ("hop1", "mh_attention_hopper_wg1"), ("hopo", "mh_attention_hopper_ovl"),
        ("hopo3", "mh_attention_hopper_ovl3"), ("hopdq", "mh_attention_hopper_dqb"))}
    tiles = ["64x64", "64x128", "128x64", "128x128"]
    by_tile = {t: step_rows(rows, "mh_attention" if t == "64x64" else f"mh_attention_f{t}")
               for t in tiles}
    out = []
    mh, pt = s["mh"], s["torch"]
    bf16_d64 = lambda k: k[2] == 64 and k[1] == "bf16"
    label = lambda k: f"{k[0]} {'causal' if k[3] else 'full'} L{k[4]}"
    if mh or pt:
        t = Table("attention bf16 d64", [
            "attention bf16 d64", "custom", "torch", "cudnn", "naive", "hopper", "cus/torch",
            "cus/cudnn", "cus128", "hop/torch", "hopWG1", "hopOVL", "hopOV3", "hopDQB", "cusT"],
            "TFLOP/s")
        order = lambda k: (k[0] != "sweep", k[0], k[3], k[4], k[5] != "fwd")
        for k in sorted(set(mh) | set(pt), key=order):
            if not bf16_d64(k) or k[5] not in ("fwd", "bwd"):
                continue
            m = mh.get(k, {})
            c, tt, h = m.get("custom_tflops"), pt.get(k, {}).get("torch_flash_tflops"), \
                s["hop"].get(k, {}).get("hopper_tflops")
            t.add(f"{label(k)} {k[5]}", num(c), num(tt), num(m.get("cudnn_tflops")),
                  num(m.get("naive_tflops")), num(h), ratio(c, tt), ratio(c, m.get("cudnn_tflops")),
                  num(s["k128"].get(k, {}).get("custom_tflops")), ratio(h, tt),
                  num(s["hop1"].get(k, {}).get("hopper_tflops")),
                  num(s["hopo"].get(k, {}).get("hopper_tflops")),
                  num(s["hopo3"].get(k, {}).get("hopper_tflops")),
                  num(s["hopdq"].get(k, {}).get("hopper_tflops")),
                  num(s["tiles"].get(k, {}).get("custom_tflops")))
        out.append(t)
    # custom's forward with each tiling (rows x keys), beside PyTorch's flash forward.
    if any(by_tile[t] for t in tiles[1:]):
        t = Table("custom forward tilings", ["custom forward tilings"] + tiles + ["torch"],
                  "TFLOP/s")
        for k in sorted(by_tile["64x64"], key=lambda k: (k[0] != "sweep", k[0], k[3], k[4])):
            if bf16_d64(k) and k[5] == "fwd":
                t.add(label(k), *[num(by_tile[x].get(k, {}).get("custom_tflops")) for x in tiles],
                      num(pt.get(k, {}).get("torch_flash_tflops")))
        out.append(t)
    # Each tuning knob's variants against its default, as the geometric mean of the speed ratio
    # over the reduced sweep's rows (L >= 1024) and, apart, over the translation batch's: the
    # numbers the defaults are chosen from (docs/perf/attention.md lists the knobs).
    t = Table("tuning knobs, variant / default (geometric mean; > 1: the variant is faster)",
              ["variant / default", "pass", "rows", "geomean", "min", "max", "n"])

    def knob(name, base, var, bcol, vcol, pass_):
        for region, pick in (("L>=1024", lambda k: k[0] == "sweep" and k[4] >= 1024),
                             ("mt", lambda k: k[0].startswith("mt-"))):
            rs = [var[k][vcol] / base[k][bcol] for k in var
                  if k in base and k[5] == pass_ and pick(k) and bf16_d64(k)
                  and var[k].get(vcol) and base[k].get(bcol)]
            if rs:
                t.add(name, pass_, region, f"x{geo(rs):.2f}", f"{min(rs):.2f}", f"{max(rs):.2f}",
                      len(rs))

    if mh:
        c, h = "custom_tflops", "hopper_tflops"
        knob("MH_FLASH_BWD_KEYS=128 / 64", mh, s["k128"], c, c, "bwd")
        knob("MH_FLASH_BWD=tiles / strips", mh, s["tiles"], c, c, "bwd")
        for x in tiles[1:]:
            knob(f"MH_FLASH_FWD_TILE={x} / 64x64", mh, by_tile[x], c, c, "fwd")
        knob("MH_HOPPER_FWD_WG=1 / 2", s["hop"], s["hop1"], h, h, "fwd")
        knob("MH_HOPPER_FWD=overlap / plain", s["hop"], s["hopo"], h, h, "fwd")
        knob("overlap MH_HOPPER_FWD_WG=3 / 2", s["hopo"], s["hopo3"], h, h, "fwd")
        knob("MH_HOPPER_BWD_DQ=bulk / atomic", s["hop"], s["hopdq"], h, h, "bwd")
        knob("hopper backward / custom backward", mh, s["hop"], c, h, "bwd")
        knob("hopper overlap forward / custom forward", mh, s["hopo"], c, h, "fwd")
        knob("hopper overlap, 3 wg / custom forward", mh, s["hopo3"], c, h, "fwd")
    if t.rows:
        out.append(t)
    return out


def full_sweep(rows, path, markdown):
    # Every row of the full sweep (into `path`, and printed in Markdown mode); here custom / torch
    # flash per dtype, head_dim, mask and pass at L >= 1024 (the target range), min-max.
    pick = lambda prefix: {akey(r): r for r in rows if str(r.get("step", "")).startswith(prefix)}
    mh, pt, hop = pick("mh_attention_full_"), pick("torch_attention_full_"), pick("mh_hopper_full_")
    if not (mh or pt):
        return []
    full = Table("full attention sweep", ["dtype d mask L pass", "custom", "torch", "cudnn",
                                          "hopper", "cus/torch", "hop/torch"], "TFLOP/s")
    groups, hgroups = {}, {}
    for k in sorted(set(mh) | set(pt), key=lambda k: (k[1], k[2], k[3], k[4], k[5])):
        m, t = mh.get(k, {}), pt.get(k, {})
        c, tt = m.get("custom_tflops"), t.get("torch_flash_tflops")
        hp = hop.get(k, {}).get("hopper_tflops")
        full.add(f"{k[1]} d{k[2]} {'causal' if k[3] else 'full'} L{k[4]} {k[5]}", num(c), num(tt),
                 num(m.get("cudnn_tflops")), num(hp), ratio(c, tt), ratio(hp, tt))
        if k[4] >= 1024 and k[5] in ("fwd", "bwd"):
            g = (k[1], k[2], k[3], k[5])
            if c and tt:
                groups.setdefault(g, []).append(c / tt)
            if hp and tt:
                hgroups.setdefault(g, []).append(hp / tt)
    if path:
        with open(path, "w") as f:
            f.write(full.text() + "\n")
    ranges = Table("full attention sweep at L >= 1024 (all rows: attention_full.txt), / torch flash",
                   ["dtype d mask pass", "custom / torch", "lengths", "hopper / torch"])
    for g, rs in sorted(groups.items()):
        hs = hgroups.get(g)
        ranges.add(f"{g[0]} d{g[1]} {'causal' if g[2] else 'full'} {g[3]}",
                   f"{min(rs):.2f}-{max(rs):.2f}", len(rs),
                   f"{min(hs):.2f}-{max(hs):.2f}" if hs else "-")
    return [ranges] + ([full] if markdown else [])


def fail(msg):
    print(f"summary.py: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results.jsonl of tools/gpu/check.sh")
    ap.add_argument("--full-table", help="write the full attention sweep's rows here (text)")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables, for docs/perf/")
    a = ap.parse_args()
    rows = []
    try:
        with open(a.results) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
    except OSError as e:
        fail(f"{a.results}: {e.strerror}")
    except json.JSONDecodeError as e:
        fail(f"{a.results}:{n}: expected one JSON object per line ({e.msg})")
    by = {r.get("step"): r for r in rows}
    tables = (training(by) + profile(by) + gemms(rows) + attention(rows)
              + full_sweep(rows, a.full_table, a.markdown))
    print("\n\n".join(t.markdown() if a.markdown else t.text() for t in tables))


if __name__ == "__main__":
    main()
