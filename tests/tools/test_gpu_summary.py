#!/usr/bin/env python3
"""tools/gpu/summary.py on a results.jsonl whose numbers are chosen so that every ratio is known."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SUMMARY = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "gpu", "summary.py")


def attn(step, col, case, seq, causal, pass_, tflops, **more):
    r = {"step": step, "case": case, "dtype": "bf16", "head_dim": 64, "causal": causal,
         "seq": seq, "pass": pass_, col: tflops}
    r.update(more)
    return r


def results():
    rows = [
        {"step": "mh_base_bf16", "tokens_per_s": 1200000.0, "rounds_tokens_per_s": [1.1e6, 1.2e6],
         "profile": [{"op": "linear_fwd", "ms": 3.0, "calls": 72.0},
                     {"op": "attention_bwd", "ms": 1.0, "calls": 18.0}]},
        {"step": "torch_base_eager", "tokens_per_s": 600000.0, "mfu": 0.13},
        {"step": "torch_base_compile", "tokens_per_s": 800000.0},
        {"step": "torch_gemm", "dtype": "bf16", "m": 8, "n": 16, "k": 32, "tflops": 400.0},
        {"step": "mh_gemm", "dtype": "bf16", "m": 8, "n": 16, "k": 32, "tflops": 300.0,
         "layer": "ffn1", "pass": "fwd", "cublas_tflops": 310.0, "fused_speedup": 1.25},
    ]
    # custom 100 and 200 TFLOP/s forward at L 1024 and 2048, torch 200 at both; the 3-warpgroup
    # overlapped Hopper forward 2x and 8x of the 2-warpgroup one (geomean x4.00).
    for seq, c, o, o3 in ((1024, 100.0, 100.0, 200.0), (2048, 200.0, 50.0, 400.0)):
        rows.append(attn("mh_attention", "custom_tflops", "sweep", seq, False, "fwd", c,
                         cudnn_tflops=400.0, naive_tflops=50.0))
        rows.append(attn("torch_attention", "torch_flash_tflops", "sweep", seq, False, "fwd", 200.0))
        rows.append(attn("mh_attention_hopper_ovl", "hopper_tflops", "sweep", seq, False, "fwd", o))
        rows.append(attn("mh_attention_hopper_ovl3", "hopper_tflops", "sweep", seq, False, "fwd",
                         o3))
    # The Hopper backward at L 1024: 100 TFLOP/s with atomics, 150 with bulk dQ (x1.50).
    rows.append(attn("mh_attention_hopper", "hopper_tflops", "sweep", 1024, False, "bwd", 100.0))
    rows.append(attn("mh_attention_hopper_dqb", "hopper_tflops", "sweep", 1024, False, "bwd",
                     150.0))
    rows.append(attn("mh_attention_full_bf16", "custom_tflops", "sweep", 4096, True, "bwd", 90.0))
    rows.append(attn("torch_attention_full_bf16", "torch_flash_tflops", "sweep", 4096, True, "bwd",
                     300.0))
    return rows


class SummaryTest(unittest.TestCase):
    def run_summary(self, lines, *args):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "results.jsonl")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            full = os.path.join(d, "attention_full.txt")
            p = subprocess.run([sys.executable, SUMMARY, path, "--full-table", full, *args],
                               capture_output=True, text=True)
            if not os.path.exists(full):
                return p, ""
            with open(full) as f:
                return p, f.read()

    def test_text_tables(self):
        p, full = self.run_summary([json.dumps(r) for r in results()])
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        base = next(l for l in out.splitlines() if l.startswith("paper-base"))
        self.assertEqual(base.split()[1:6], ["1,200,000", "600,000", "800,000", "2.00", "1.50"])
        self.assertIn("13.0%", base)
        self.assertIn("spread 8.3%", out)  # rounds 1.1M and 1.2M
        self.assertIn("75.0%", out)  # linear_fwd's share of the profiled 4 ms
        gemm = next(l for l in out.splitlines() if l.startswith("bf16 8x16x32"))
        self.assertEqual(gemm.split()[-2:], ["0.75", "1.25x"])
        row = next(l for l in out.splitlines() if l.startswith("sweep full L1024 fwd"))
        self.assertEqual(row.split()[4:10], ["100.0", "200.0", "400.0", "50.0", "-", "0.50"])
        knob = next(l for l in out.splitlines() if "overlap MH_HOPPER_FWD_WG=3 / 2" in l)
        self.assertEqual(knob.split()[-5:], ["L>=1024", "x4.00", "2.00", "8.00", "2"])
        dq = next(l for l in out.splitlines() if "MH_HOPPER_BWD_DQ=bulk / atomic" in l)
        self.assertEqual(dq.split()[-6:], ["bwd", "L>=1024", "x1.50", "1.50", "1.50", "1"])
        vs_custom = next(l for l in out.splitlines() if "hopper overlap forward / custom" in l)
        self.assertIn("x0.50", vs_custom)  # 100/100 and 50/200
        self.assertIn("0.30-0.30", out)  # the full sweep: custom 90 against torch 300
        self.assertIn("bf16 d64 causal L4096 bwd", full)

    def test_markdown(self):
        p, _ = self.run_summary([json.dumps(r) for r in results()], "--markdown")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("| paper-base | 1,200,000 | 600,000 | 800,000 | 2.00 | 1.50 | 13.0% |",
                      p.stdout)
        self.assertIn("| bf16 d64 causal L4096 bwd | 90.0 | 300.0 | - | - | 0.30 | - |", p.stdout)

    def test_bad_line_names_file_and_line(self):
        p, _ = self.run_summary([json.dumps(results()[0]), "{not json"])
        self.assertEqual(p.returncode, 2)
        self.assertRegex(p.stderr, r"results\.jsonl:2: expected one JSON object per line")


if __name__ == "__main__":
    unittest.main()
