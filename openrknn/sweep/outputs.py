"""A finished sweep's files: table.csv / table.json, the recommended configuration per chip as a ready `openrknn
convert` YAML with its .rknn, and report.html (the table and the accuracy / latency plot)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Dict

from ..atomic import write_atomic, write_text_atomic

COLUMNS = ("label", "target", "quantized_dtype", "quantized_method", "quantized_algorithm", "weight_rounding",
           "auto_hybrid", "metric", "value", "ci_low", "ci_high", "samples", "npu_ms", "memory_mib", "weights_mib",
           "kept_out_of_8bit", "build_s", "stats_reused", "pareto", "recommended", "error", "key")


def _clean(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def table_csv(rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if _clean(r.get(k)) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def write_outputs(spec, result, keys: Dict) -> None:
    import yaml

    from .spec import convert_document

    out = result.out_dir
    paths = {"csv": out / "table.csv", "json": out / "table.json", "report": out / "report.html"}
    write_text_atomic(paths["csv"], table_csv(result.rows))
    by_key = {keys[c]: c for c in spec.configurations}
    recommended_files = []
    for target, rec in result.recommended.items():
        conf = by_key[rec["key"]]
        yml, rknn = out / f"recommended-{target}.yml", out / f"recommended-{target}.rknn"
        doc = convert_document(spec, conf, rknn.name)
        header = (f"# openrknn sweep: recommended for {target}: {conf.label}\n# {rec['metric']} {rec['value']:.4f} "
                  f"({rec['ci_low']:.4f} .. {rec['ci_high']:.4f}), estimated NPU time {rec['npu_ms']:.2f} ms\n"
                  f"# rebuild: openrknn convert {yml.name}\n")
        write_text_atomic(yml, header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        write_atomic(rknn, lambda tmp, key=rec["key"]: shutil.copyfile(out / "models" / f"{key}.rknn", tmp))
        recommended_files += [yml.name, rknn.name]
        paths[f"recommended-{target}"] = str(yml)
    summary = {"rows": [{k: _clean(v) for k, v in r.items()} for r in result.rows],
               "pareto": {t: [result.rows[i]["key"] for i in v["front"]] for t, v in result.targets.items()},
               "recommended": {t: r["key"] for t, r in result.recommended.items()},
               "skipped": result.skipped, "executor": result.executor, "wall_s": result.wall_s,
               "workers": result.workers, "metric": spec.evaluation.metric}
    write_text_atomic(paths["json"], json.dumps(summary, indent=1))
    from ..analysis.charts import pareto_chart
    from ..analysis.report import sweep_section, write_report

    with tempfile.TemporaryDirectory() as tmp:
        chart = pareto_chart(result.rows, Path(tmp) / "pareto.png", spec.evaluation.metric)
        section = sweep_section(result.rows, chart, spec.evaluation.metric, recommended_files)
        write_report(paths["report"], "openrknn sweep", f"{spec.convert.model.name}: {len(result.rows)} "
                     "configurations", [section])
    result.paths = {k: str(v) for k, v in paths.items()}
