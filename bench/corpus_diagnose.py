"""Where does int8 lose accuracy on a corpus model? openrknn's own accuracy_analysis, per layer, summarised.

For each model: build w8a8 on rk3588 (default settings) through the public API with the corpus calibration set
(bench/corpus.py prepares it), run `accuracy_analysis` on held-out inputs, and print
- the layers with the lowest "single" cosine (their own quantization error, fed float inputs) and their op types,
- per op type: how many layers fall below 0.98 single cosine and the lowest one,
- the "entire" cosine at each graph output, and the layer where the entire-mode cosine drops most in one step.

Usage: python bench/corpus_diagnose.py [--cache DIR] --only NAME,... [--inputs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import _uses_mean, prepare  # noqa: E402
from corpus_fetch import BY_NAME, DEFAULT_CACHE, model_path  # noqa: E402


def _rows(path: Path):
    rows = []
    for ln in path.read_text().splitlines():
        if ln.startswith("#") or ln.startswith("layer_name"):
            continue
        # layer_name op entire_cos entire_euc single_cos single_euc[*] tensor
        parts = ln.split()
        if len(parts) < 7:
            continue
        name, op = " ".join(parts[:-6]), parts[-6]
        try:
            e_cos, s_cos = float(parts[-5]), (float(parts[-3]) if parts[-3] != "-" else None)
        except ValueError:
            continue
        rows.append({"name": name, "op": op, "entire": e_cos, "single": s_cos})
    return rows


def diagnose(name: str, cache: Path, n_inputs: int, out_root: Path) -> dict:
    from openrknn.api import RKNN

    entry = BY_NAME[name]
    wd = prepare(entry, cache, 10)
    rknn = RKNN()
    cfg = dict(target_platform="rk3588", quantized_dtype="w8a8")
    if _uses_mean(entry):
        cfg.update(mean_values=[list(entry["mean"])], std_values=[list(entry["std"])])
    report = {"model": name}
    if rknn.config(**cfg) != 0 or rknn.load_onnx(str(model_path(cache, name)), input_size_list=[entry["shape"]]) != 0 \
            or rknn.build(do_quantization=True, dataset=str(wd / "dataset.txt")) != 0:
        report["error"] = str(getattr(rknn, "last_error", "build failed"))
        return report
    per_input = []
    for i in range(n_inputs):
        out = out_root / name / f"input{i}"
        if rknn.accuracy_analysis(inputs=[str(wd / f"eval_{i:02d}.npy")], output_dir=str(out)) != 0:
            report["error"] = f"accuracy_analysis: {getattr(rknn, 'last_error', '')}"
            return report
        per_input.append(_rows(out / "error_analysis.txt"))
    rknn.release()
    # average over inputs, by layer name (same order in every file)
    rows = per_input[0]
    for r_k in per_input[1:]:
        for a, b in zip(rows, r_k):
            a["entire"] += b["entire"]
            a["single"] = None if a["single"] is None else a["single"] + b["single"]
    for r in rows:
        r["entire"] /= n_inputs
        if r["single"] is not None:
            r["single"] /= n_inputs
    own = sorted((r for r in rows if r["single"] is not None), key=lambda r: r["single"])
    by_op = defaultdict(lambda: [0, 0, 1.0])
    for r in own:
        s = by_op[r["op"]]
        s[0] += 1
        s[1] += r["single"] < 0.98
        s[2] = min(s[2], r["single"])
    drops = [(rows[k - 1]["entire"] - rows[k]["entire"], rows[k]) for k in range(1, len(rows))]
    drop, at = max(drops, key=lambda d: d[0]) if drops else (0.0, None)
    report.update(layers=len(rows), worst=[(r["name"], r["op"], round(r["single"], 4)) for r in own[:6]],
                  by_op={op: {"layers": v[0], "below_0.98": v[1], "min_single": round(v[2], 4)}
                         for op, v in sorted(by_op.items(), key=lambda kv: kv[1][2])},
                  largest_entire_drop=(at["name"], at["op"], round(drop, 4)) if at else None,
                  last_entire=[(r["name"], round(r["entire"], 4)) for r in rows[-3:]])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", required=True)
    ap.add_argument("--inputs", type=int, default=2, help="held-out inputs to analyse per model")
    ap.add_argument("--out", type=Path, default=None, help="analysis folders (default <cache>/diagnose)")
    args = ap.parse_args(argv)
    out_root = args.out or args.cache / "diagnose"
    for name in args.only.split(","):
        rep = diagnose(name, args.cache, args.inputs, out_root)
        print(json.dumps(rep, indent=1), flush=True)
        (out_root / name).mkdir(parents=True, exist_ok=True)
        (out_root / name / "summary.json").write_text(json.dumps(rep, indent=1))

    return 0


if __name__ == "__main__":
    sys.exit(main())
