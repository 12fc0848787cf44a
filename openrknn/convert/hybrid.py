"""Hybrid quantization: step1 writes editable files, step2 builds from them, auto_hybrid picks the fewest layers to
promote so every output meets a cosine threshold, keep_float_overrides maps layer names to quantizer overrides.

Files written by step1 (``<name>`` = the model file's stem):
- ``<name>.model``: the float ONNX graph with pre-processing (build_float_graph), with a metadata_props entry
  ``openrknn.hybrid`` (JSON: input metas, notes, source, the build config).
- ``<name>.data``: an .npz (no pickle) holding the calibration feeds as the quantizer saw them (``s<i>/<input>``,
  stored as uint8 when lossless) and ``__meta__`` (JSON: quantization settings and step1's tensor parameters, so
  step2 can tell which scales / zero points were edited).
- ``<name>.quantization.cfg``: YAML; ``custom_quantize_layers`` {layer, tensor or weight: dtype} is what users edit
  (dtypes: float16 | float | int16 | int8 | uint8 and the vendor's dtype names); ``quantize_parameters`` lists
  every quantized tensor (dtype, method, min/max, scale, zero point); an edited scale / zero point is used as given.
Step2 re-runs the quantizer on the same feeds with the same settings, so an unedited cfg reproduces step1's model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..atomic import write_atomic, write_bytes_atomic
from ..config import BuildConfig
from ..errors import ConfigError, PackageError
from ..frontends import LoadedModel
from ..quant import quantize
from ..quant import hybrid as hq
from ..quant.ir import GraphInfo
from ..quant.pipeline import decodes_step_by_step
from ..quant.plan import ALL_PRE_ACTIVATIONS
from .build import BuildOptions, BuildResult, build_once
from .float_graph import build_float_graph, file_layouts, file_normalisation
from .package_meta import BuildFlags, make_package, source_record
from .quantize import calibration_data, quant_options, quantization_record

log = logging.getLogger("openrknn.hybrid")
META_KEY = "openrknn.hybrid"


def _unit_policy(cfg: BuildConfig) -> object:
    """The pre-activation policy _unit_table maps layers with: the chip's (True) unless the build requantizes every
    pre-activation (pre_activation_points='tflite')."""
    return ALL_PRE_ACTIVATIONS if cfg.pre_activation_points == "tflite" else True


def _calibration_feeds(dataset: Optional[str], metas: List[dict], cfg: BuildConfig) -> List[Dict[str, np.ndarray]]:
    return list(calibration_data(dataset, metas, cfg))


def _unit_table(float_model: onnx.ModelProto, tensors: Dict[str, dict], policy: object = True
                ) -> Tuple[Dict[str, List[str]], Dict[str, List[str]]]:
    """(unit -> override names, unit -> its layers), units in graph order.

    A unit is what auto hybrid promotes as one: the layers whose activation points share a scale group, since the
    quantizer gives a group one format whichever member is asked (a score map's sigmoid and the reshape and transpose
    that carry it to the output; the convs a concat joins). Searching layer by layer would weigh choices the build
    cannot make apart. A unit is named after its first layer that computes (a weight, or a point that is not
    derived), not after the data movement that carries it."""
    group_of, derived = hq.scale_groups(float_model, requantized_pre_activations=policy)
    layers: Dict[str, List[str]] = {}
    seen = set()
    # policy: the build's (QuantOptions.requantized_pre_activations). The default, the map with the chip's
    # requantized pre-activations, cut to the package's tensors, is right for either kind of chip; a
    # pre_activation_points='tflite' build makes more conv outputs points of their own and needs its own map
    for name, names in hq.layer_map(float_model, requantized_pre_activations=policy).items():
        known = [t for t in names if hq.present(t, tensors)]
        acts = frozenset(_activations(known, tensors))
        if not known or (acts and acts in seen):  # conv+act is one layer
            continue
        seen.add(acts)
        layers[name] = known
    order = {name: i for i, name in enumerate(layers)}
    root = {name: name for name in layers}

    def find(n: str) -> str:
        while root[n] != n:
            n = root[n]
        return n

    owner: Dict[int, str] = {}
    for name, known in layers.items():
        for t in _activations(known, tensors):
            g = group_of.get(hq.override_name(t))
            if g is None:
                continue
            if g not in owner:
                owner[g] = name
                continue
            a, b = find(owner[g]), find(name)
            if a != b:  # the earlier layer stays the root
                root[max(a, b, key=order.get)] = min(a, b, key=order.get)

    def computes(known: List[str]) -> bool:
        return any(tensors[p].get("kind") == "weight" or hq.override_name(p) not in derived
                   for t in known for p in hq.every_part(t, tensors))

    members: Dict[str, List[str]] = {}
    for name in layers:
        members.setdefault(find(name), []).append(name)
    units: Dict[str, List[str]] = {}
    unit_layers: Dict[str, List[str]] = {}
    for group in members.values():
        key = next((n for n in group if computes(layers[n])), group[0])
        units[key] = list(dict.fromkeys(t for n in group for t in layers[n]))
        unit_layers[key] = group
    return units, unit_layers


def _activations(names: Sequence[str], tensors: Dict[str, dict]) -> List[str]:
    """The activation points of ``names`` as they appear in the QDQ graph (with every range-split part)."""
    return [p for t in names for p in hq.every_part(t, tensors) if tensors[p].get("kind") == "activation"]


# ---------------------------------------------------------------- step 1


def hybrid_step1(loaded: LoadedModel, cfg: BuildConfig, dataset: str, out_dir: str = ".", proposal: bool = False,
                 progress: bool = True) -> Dict[str, str]:
    """Write <name>.model, <name>.data and <name>.quantization.cfg into out_dir; returns {'model','data','cfg'}.
    proposal=True pre-fills custom_quantize_layers with the layers auto selection would promote (at least the most
    sensitive one)."""
    import yaml

    if cfg.dynamic_input:
        raise ConfigError("dynamic_input", cfg.dynamic_input, hint="the hybrid quantization steps build one shape "
                          "set; use build(auto_hybrid=True), which keeps every set, or leave dynamic_input out here")
    cfg = file_layouts(loaded, file_normalisation(loaded, cfg))
    float_model, metas, notes = build_float_graph(loaded, cfg)
    feeds = _calibration_feeds(dataset, metas, cfg)
    result = quantize(float_model, feeds, quant_options(cfg, metas=metas), progress)
    custom: Dict[str, str] = {}
    if proposal:
        custom = {name: "float16" for name in _propose(float_model, result, feeds, cfg, metas, progress)}
    name = Path(loaded.source_file).stem if loaded.source_file else "model"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / f"{name}.model", "data": out / f"{name}.data", "cfg": out / f"{name}.quantization.cfg"}

    m = onnx.ModelProto()
    m.CopyFrom(float_model)
    info = {"metas": metas, "notes": loaded.notes + notes, "config": cfg.to_dict(),
            "source": source_record(loaded.framework, loaded.source_file, loaded.source_sha256, [])}
    onnx.helper.set_model_props(m, {META_KEY: json.dumps(info, default=_jsonable)})
    write_bytes_atomic(paths["model"], m.SerializeToString())

    arrays = {}
    for i, feed in enumerate(feeds):
        for k, v in feed.items():
            as_u8 = v.astype(np.uint8)
            arrays[f"s{i}/{k}"] = as_u8 if np.array_equal(as_u8, v) else v
    meta = {"dtype": cfg.quantized_dtype, "algorithm": cfg.quantized_algorithm, "method": cfg.quantized_method,
            "weight_rounding": cfg.weight_rounding, "range_split": cfg.range_split,
            "range_remap": cfg.range_remap, "range_choice": cfg.range_choice, "log_ranges": cfg.log_ranges,
            "pre_activation_points": cfg.pre_activation_points, "target": cfg.target,
            "samples": len(feeds), "inputs": [m_["name"] for m_ in metas],
            "input_dtypes": {k: str(v.dtype) for k, v in feeds[0].items()}, "tensors": result.tensors}
    arrays["__meta__"] = np.array(json.dumps(meta, default=_jsonable))
    write_atomic(paths["data"], lambda tmp: np.savez(tmp, **arrays), suffix=".npz")  # savez adds .npz otherwise

    doc = hq.cfg_document(result.tensors, hq.qparam_ranges(result.tensors), result.report.get("method", ""), custom)
    text = ("# openrknn hybrid quantization. Edit custom_quantize_layers ({layer, tensor or weight: float16 | int16 |"
            " int8 | uint8}) or a scale / zero_point below, then run hybrid_quantization_step2.\n"
            + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    write_bytes_atomic(paths["cfg"], text.encode())
    log.info("hybrid step1: wrote %s", ", ".join(str(p) for p in paths.values()))
    return {k: str(v) for k, v in paths.items()}


def _propose(float_model: onnx.ModelProto, result, feeds: List[Dict[str, np.ndarray]], cfg: BuildConfig,
             metas: List[dict], progress: bool) -> List[str]:
    """The fewest layers that, left float, bring every output to cfg.auto_hybrid_cos_thresh on the first 8
    calibration feeds (empty when plain quantization already does)."""
    sample = feeds[:8]
    names = hq.scored_outputs(result.model)  # the graph outputs (an index output: its scores)
    ref = hq.run_outputs(float_model, sample, names=names)
    if min(hq.output_cosines(ref, hq.run_outputs(result.model, sample, names=names))) >= cfg.auto_hybrid_cos_thresh:
        return []
    units, unit_layers = _unit_table(float_model, result.tensors, _unit_policy(cfg))
    picked, detail = _select(float_model, result.model, result.tensors, sample, cfg.auto_hybrid_cos_thresh,
                             progress, ref, names, weights=result.float_weights, table=(units, unit_layers))
    k, _ = _confirm(detail["order"], len(picked), units, "float",
                    lambda ov: quantize(float_model, feeds, quant_options(cfg, ov, metas=metas), False), ref, sample,
                    cfg.auto_hybrid_cos_thresh, names)
    return [n for u in detail["order"][:k] for n in unit_layers[u]]


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# ---------------------------------------------------------------- step 2


def _read_model(path: str) -> Tuple[onnx.ModelProto, dict]:
    try:
        model = onnx.load(path)
    except Exception as e:
        raise PackageError(f"cannot read hybrid model '{path}' ({e}); pass the .model file hybrid step1 "
                           "wrote") from None
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise PackageError(f"'{path}' has no {META_KEY} record: it was not written by hybrid_quantization_step1")
    return model, json.loads(props[META_KEY])


def _read_data(path: str) -> Tuple[List[Dict[str, np.ndarray]], dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            feeds = [{k: z[f"s{i}/{k}"].astype(meta["input_dtypes"][k]) for k in meta["inputs"]}
                     for i in range(meta["samples"])]
    except (OSError, KeyError, ValueError) as e:
        raise PackageError(f"cannot read hybrid data '{path}' ({e}); pass the .data file hybrid step1 wrote") from None
    return feeds, meta


def hybrid_step2(model_input: str, data_input: str, cfg_path: str, cfg: Optional[BuildConfig] = None,
                 progress: bool = True) -> BuildResult:
    """Build from step1's files after the user edited the .quantization.cfg. The quantization settings are step1's
    (its tensors are what the cfg describes); other config (target...) from ``cfg`` when given."""
    import yaml

    from ..config import make_config

    float_model, info = _read_model(model_input)
    feeds, meta = _read_data(data_input)
    if not Path(cfg_path).is_file():
        raise ConfigError("model_quantization_cfg", str(cfg_path),
                          hint="no such file; pass the .quantization.cfg hybrid_quantization_step1 wrote")
    try:
        doc = yaml.safe_load(Path(cfg_path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("model_quantization_cfg", str(cfg_path), hint=f"cannot read it as YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError("model_quantization_cfg", str(cfg_path), hint="must be a YAML map")
    if cfg is None:
        cfg = make_config(**{k: v for k, v in info["config"].items()
                             if k not in ("mean_values", "std_values", "reorder_channel")})
    quant = {"quantized_dtype": meta["dtype"], "quantized_algorithm": meta["algorithm"],
             "quantized_method": meta["method"], "weight_rounding": meta.get("weight_rounding", "auto"),
             "range_split": meta.get("range_split", True), "range_remap": meta.get("range_remap", True),
             "range_choice": meta.get("range_choice", True), "log_ranges": meta.get("log_ranges", True),
             "pre_activation_points": meta.get("pre_activation_points", "chip")}
    if any(getattr(cfg, k) != v for k, v in quant.items()):
        log.warning("hybrid step2 uses step1's quantization settings %s (the cfg's parameters were made with them)",
                    quant)
    cfg = dataclasses.replace(cfg, **quant)
    original = {k: v for k, v in meta["tensors"].items() if v.get("kind") != "bias"}
    overrides = hq.resolve_layers(doc.get("custom_quantize_layers") or {}, float_model, original,
                                  requantized_pre_activations=quant_options(cfg).requantized_pre_activations)
    fixed = hq.edited_params(doc, original)
    for name in set(fixed) & set(overrides):
        log.warning("'%s': dtype changed to %s and scale edited; the edited scale is used as given", name,
                    overrides[name])
    result = quantize(float_model, feeds, quant_options(cfg, overrides, fixed, info["metas"]), progress)
    quantization = quantization_record(
        cfg, result, len(feeds), overrides,
        fixed={k: {"scale": s, "zero_point": z} for k, (s, z) in fixed.items()},
        hybrid={"custom_quantize_layers": dict(doc.get("custom_quantize_layers") or {})})
    del float_model.metadata_props[:]
    notes = info.get("notes", [])
    source = {**info.get("source", {}), "notes": notes}
    pkg = make_package(float_model, result.model, info["metas"], cfg, BuildFlags(True, str(data_input)), quantization,
                       source)
    return BuildResult(pkg, float_model, result.model, list(notes), {}, result.report)


# ---------------------------------------------------------------- automatic


RANK_SAMPLES = 2    # feeds the per-unit ranking runs on: one switchable-model run per unit and feed
MAX_CONFIRM = 5     # real builds that confirm the estimated prefix, extend it or search below it
PRUNE_TRIES = 12    # estimate runs the pruning of a found prefix may spend (one per unit tried)


def _switchable(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, tensors: Dict[str, dict],
                names: Optional[List[str]] = None, weights: Optional[Dict[str, np.ndarray]] = None,
                all_units: Optional[Dict[str, List[str]]] = None) -> Tuple[Dict[str, List[str]], hq.SwitchableModel]:
    """The units auto hybrid can promote (those with activation points) and the QDQ graph with each one switchable
    to float: its activation points (every range-split part), its weights and their biases. With ``weights``
    (QuantResult.float_weights) every weight and bias is restorable and all units float is the float model."""
    if all_units is None:
        all_units = _unit_table(float_model, tensors)[0]
    units = {k: v for k, v in all_units.items() if _activations(v, tensors)}
    # weights count too: with per-tensor (u8) weights they are as large an error source as the activations; a bias
    # goes back to float with its weight (bias correction fitted it to the quantized layer's error)
    bias_of = hq.biases_by_weight(qmodel)
    unit_weights = {k: [p for w in v for p in hq.every_part(w, tensors) if tensors[p].get("kind") == "weight"]
                    for k, v in units.items()}
    unit_weights = {k: v + [bias_of[w] for w in v if w in bias_of] for k, v in unit_weights.items()}
    float_weights = weights if weights else hq.float_weights(float_model, qmodel,
                                                             [w for v in unit_weights.values() for w in v])
    members = {k: _activations(v, tensors) + [w for w in unit_weights[k] if w in float_weights]
               for k, v in units.items()}
    return units, hq.SwitchableModel(qmodel, members, float_weights, names)


def _select(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, tensors: Dict[str, dict],
            feeds: Sequence[Dict[str, np.ndarray]], thresh: float, progress: bool = True,
            reference: Optional[List[list]] = None, names: Optional[List[str]] = None,
            rank_samples: int = RANK_SAMPLES, weights: Optional[Dict[str, np.ndarray]] = None,
            table: Optional[tuple] = None) -> Tuple[List[str], dict]:
    """Rank units by sensitivity (the damage each one does quantized alone, every other float: hq.damage, on
    ``rank_samples`` feeds) and return the prefix with the fewest layers (``table``: _unit_table's, made here when
    not given), of that ranking, of the ranking by damage per layer or of the graph order, that, left float
    together, lifts every output cosine on ``feeds`` to ``thresh`` (binary search; at least one unit). Every
    estimate runs on one switchable model (hq.SwitchableModel): one onnxruntime session for the whole search, no
    rebuild.
    weights: QuantResult.float_weights of the build (every weight restorable, rewritten ones included); without
    them only the weights the quantizer did not rewrite are."""
    all_units, unit_layers = table if table is not None else _unit_table(float_model, tensors)
    units, switch = _switchable(float_model, qmodel, tensors, names, weights, all_units)
    ref = reference if reference is not None else hq.run_outputs(float_model, feeds, names=names)
    workers = hq.run_workers()
    sens = hq.damage(switch, ref[:rank_samples], feeds[:rank_samples], progress)
    ranked = sorted(units, key=lambda k: -sens[k])
    # Errors made early are amplified by every later layer, yet one early layer left float barely helps while the
    # others still add theirs, so a short graph-order prefix can beat a long sensitivity-ranked list (it does on
    # YOLOX-nano u8): the graph-order prefix is the second candidate order.
    topological = [n.name for n in float_model.graph.node if n.name in units]
    estimates: Dict[Tuple[str, int], float] = {}

    def estimate(kind: str, order: List[str], k: int) -> float:
        if (kind, k) not in estimates:
            estimates[kind, k] = min(hq.output_cosines(ref, switch.run(feeds, order[:k], workers)))
        return estimates[kind, k]

    def shortest(kind: str, order: List[str]) -> int:
        lo, hi = 1, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if estimate(kind, order, mid) >= thresh:
                hi = mid
            else:
                lo = mid + 1
        return lo

    orders = {"sensitivity": ranked, "graph order": topological}
    if not ranked:
        return [], {"sensitivity": {}, "order": [], "order_kind": "sensitivity", "orders": orders, "estimate": {}}
    size = {u: len(unit_layers[u]) for u in units}
    # a unit of several layers (a score map's sigmoid with the reshape and transpose that carry it) costs each
    per_layer = sorted(units, key=lambda u: -sens[u] / size[u])
    if per_layer != ranked:
        orders["sensitivity per layer"] = per_layer
    # fewest layers, then fewest units; ties keep the first order listed. An order after the first is searched
    # only when its longest prefix that could still beat the best so far meets the threshold: one estimate run
    # rules out an order that cannot win (SLANet's graph order, 68 units against 30), where a search costs six or
    # seven. The search itself stays over the whole order: a shorter range lands on other prefixes where the
    # estimate is not monotonic (the mel model: 3 -> 11 layers after pruning)
    found: Dict[str, int] = {}
    best: Optional[Tuple[int, int]] = None
    for kd, kd_order in orders.items():
        layers = list(itertools.accumulate(size[u] for u in kd_order))  # of each prefix
        if best is not None:
            hi = sum(1 for j, n in enumerate(layers) if (n, j + 1) < best)  # prefixes that would beat it
            if hi == 0 or estimate(kd, kd_order, hi) < thresh:
                continue
        found[kd] = shortest(kd, kd_order)
        cost = (layers[found[kd] - 1], found[kd])
        if best is None or cost < best:
            best, kind = cost, kd
    order, k = orders[kind], found[kind]
    log.info("hybrid: %s reach cosine %.4f (estimate; an order not named cannot do it in fewer layers); "
             "trying %s first", ", ".join(f"{found[kd]} unit(s) by {kd}" for kd in found), thresh, kind)
    kept, dropped, prune_runs = order[:k], [], 0
    # a model that decodes step by step diverges on some inputs whatever is promoted: its estimate on a few
    # calibration samples cannot judge a unit unneeded (SLANet: 33 -> 26 layers, held-out cosine 0.92 -> 0.83)
    if not decodes_step_by_step(GraphInfo(float_model)):
        kept, dropped, prune_runs = _prune(order[:k], size, sens,
                                           lambda us: min(hq.output_cosines(ref, switch.run(feeds, us, workers))),
                                           thresh)
    if dropped:
        # the confirming builds take prefixes: the kept units, then the dropped ones back, then the rest
        order, k = kept + dropped + order[k:], len(kept)
        log.info("hybrid: %d of those unit(s) are not needed together with the others (estimate): %s",
                 len(dropped), ", ".join(dropped))
    return order[:k], {"sensitivity": {u: sens[u] for u in ranked}, "order": order, "order_kind": kind,
                       "orders": orders, "found": found, "pruned": dropped,
                       "estimate": {f"{kd}:{n}": c for (kd, n), c in estimates.items()},
                       "estimate_runs": len(estimates) + len(units) + prune_runs}


def _prune(picked: List[str], size: Dict[str, int], sens: Dict[str, float], estimate, thresh: float
           ) -> Tuple[List[str], List[str], int]:
    """Drop the units of a found prefix that the others make unnecessary: a ranking prefix holds every unit ranked
    above the last one it needs, and a unit that does damage alone can be harmless once its neighbours are float
    (the layout detector's eight outputs each need their own few). Tries the units with the least damage per layer
    first, keeps a unit out when the estimate still meets ``thresh``; at most PRUNE_TRIES units are tried (a model
    whose prefix is long pays one estimate run per unit). Returns (kept, dropped, estimate runs)."""
    kept, dropped, runs = list(picked), [], 0
    for u in sorted(picked, key=lambda u: sens[u] / size[u])[:PRUNE_TRIES]:
        if len(kept) == 1:
            break
        trial = [v for v in kept if v != u]
        runs += 1
        if estimate(trial) >= thresh:
            kept, dropped = trial, dropped + [u]
    return kept, dropped, runs


def _confirm(order: List[str], k: int, units: Dict[str, List[str]], promote: str, make, ref: List[list],
             feeds: Sequence[Dict[str, np.ndarray]], thresh: float, names: Optional[List[str]] = None,
             max_builds: int = MAX_CONFIRM, trials: Optional[List[Tuple[int, float]]] = None) -> Tuple[int, tuple]:
    """Real builds (``make(overrides)`` -> object with .model) with the first k units of ``order`` promoted,
    starting from the estimate's k: while none has met ``thresh``, half as many units again; once one has, a
    binary search below it down to one unit fewer than the estimate's k, at most ``max_builds`` builds in all
    (then, if none met it, every unit of the order). The real quantizer decides (promoted weights, bias correction
    refitted), so the estimate is only the start; yet a real build beats it by one unit at most on the corpus
    (PP-OCRv5 det met with 2 where the estimate needed 3), and every build further below fell short (PP-OCRv5 det
    1 of 3, the layout detector 2 of 4, yolo26n 11 to 21 of 23): no build is spent there.
    Returns (k, (made, cosines)) of the smallest k that met the threshold; ``trials`` (a list) gets (units
    promoted, worst output cosine) of every build, in the order made."""
    done: Dict[int, tuple] = {}
    if not order:  # nothing can be promoted: one build (what the plain build gave), not a search over nothing
        made = make({})
        return 0, (made, hq.output_cosines(ref, hq.run_outputs(made.model, feeds, names=names,
                                                                workers=hq.run_workers())))

    def trial(n: int) -> bool:
        made = make({t: promote for u in order[:n] for t in units[u]})
        cos = hq.output_cosines(ref, hq.run_outputs(made.model, feeds, names=names, workers=hq.run_workers()))
        done[n] = (made, cos)
        if trials is not None:
            trials.append((n, min(cos)))
        log.info("hybrid: %d unit(s) promoted -> worst output cosine %.5f", n, min(cos))
        return min(cos) >= thresh

    k = max(1, min(k, len(order)))
    good, bad = None, max(0, k - 2)
    while len(done) < max_builds:
        if trial(k):
            good = k
        else:
            bad = k
        if good is None:
            if k >= len(order):
                break
            k = min(len(order), max(k + 1, (3 * k + 1) // 2))
        elif good - bad <= 1:
            break
        else:
            k = (bad + good) // 2
    if good is None:
        if len(order) not in done:
            trial(len(order))
        good = len(order)
    return good, done[good]


def _cost(model: onnx.ModelProto, cfg: BuildConfig) -> dict:
    """Estimated NPU latency and memory of a (QDQ) model; None where the analysis cannot estimate it."""
    out: dict = {"latency_us": None, "memory_bytes": None}
    try:
        from ..analysis.perf import estimate_perf

        out["latency_us"] = float(estimate_perf(model, cfg.target, cfg.quantized_dtype).total_us)
    except Exception as e:  # the estimate is a report extra; never fail the build for it
        log.info("latency estimate unavailable: %s", e)
    try:
        from ..analysis.memory import eval_memory_report

        out["memory_bytes"] = int(eval_memory_report(model, cfg.target, cfg.quantized_dtype, is_print=False)["total"])
    except Exception as e:
        log.info("memory estimate unavailable: %s", e)
    return out


def auto_hybrid(loaded: LoadedModel, cfg: BuildConfig, opts: BuildOptions, cos_thresh: Optional[float] = None,
                eval_feeds: Optional[Sequence[Dict[str, np.ndarray]]] = None, promote: str = "int16",
                sensitivity_samples: int = 8, per_branch: bool = False, progress: bool = True) -> BuildResult:
    """Build int8, then promote the fewest layers (to ``promote``: 'int16' or 'float') until every output's cosine
    float vs quantized on ``eval_feeds`` (default: the first calibration samples) reaches ``cos_thresh`` (default
    cfg.auto_hybrid_cos_thresh; per_branch=True: each quantized tensor an output is assembled from).
    Returns the BuildResult; its hybrid_report holds the layers, cosines and cost before/after."""
    thresh = cfg.auto_hybrid_cos_thresh if cos_thresh is None else float(cos_thresh)
    if promote not in ("int16", "float"):
        raise ConfigError("promote", promote, ("int16", "float"))
    # the confirming builds calibrate the same float graph on the same feeds: one statistics cache for all of them
    # (byte-identical results, quant/stats_cache.py)
    if opts.stats_cache is None:
        from ..quant.stats_cache import StatsCache

        opts = dataclasses.replace(opts, stats_cache=StatsCache())
    base_opts = dataclasses.replace(opts, auto_hybrid=False)
    graph = build_float_graph(loaded, cfg) if not loaded.source_quant else None  # the same for every build
    plain = build_once(loaded, cfg, base_opts, progress, graph)
    dataset = opts.dataset
    tensors = plain.package.metadata["quantization"]["tensors"]
    feeds = list(eval_feeds) if eval_feeds else _calibration_feeds(dataset, plain.package.metadata["inputs"],
                                                                   cfg)[:sensitivity_samples]
    # per_branch: each quantized tensor an output is assembled from in float must meet the threshold (stricter)
    names = (hq.measured_tensors(plain.model, plain.float_model) if per_branch
             else hq.scored_outputs(plain.model))  # the graph outputs; an index output by the scores it picks from
    ref = hq.run_outputs(plain.float_model, feeds, names=names, workers=hq.run_workers())
    base = hq.output_cosines(ref, hq.run_outputs(plain.model, feeds, names=names, workers=hq.run_workers()))
    units, unit_layers = _unit_table(plain.float_model, tensors, _unit_policy(cfg))
    report = {"threshold": thresh, "promote": promote, "measured": names or [o.name for o in plain.model.graph.output],
              "cosine_before": base, "cosine_after": base, "met": min(base) >= thresh,
              "layers": [], "overrides": {}, "cost_before": _cost(plain.model, cfg), "builds": 1, "trials": [],
              "units_total": sum(len(v) for v in unit_layers.values())}
    report["cost_after"] = report["cost_before"]
    if min(base) >= thresh:
        log.info("auto hybrid: plain quantization already meets cosine %.4f (worst %.5f)", thresh, min(base))
        plain.hybrid_report = report
        return plain
    picked, detail = _select(plain.float_model, plain.model, tensors, feeds[:sensitivity_samples], thresh, progress,
                             ref[:sensitivity_samples] if len(feeds) > sensitivity_samples else ref, names,
                             weights=plain.float_weights, table=(units, unit_layers))

    def make(overrides):
        report["builds"] += 1
        return build_once(loaded, cfg, dataclasses.replace(base_opts, overrides={**opts.overrides, **overrides}),
                          False, graph)

    order, kind = detail["order"], detail["order_kind"]
    trials: List[Tuple[int, float]] = []
    k, (result, cos) = _confirm(order, len(picked), units, promote, make, ref, feeds, thresh, names, trials=trials)
    overrides = {t: promote for u in order[:k] for t in units[u]}
    # what each real build gave, so a report can say why this many layers (the estimate only starts the search)
    report["trials"] = [{"units": n, "layers": sum(len(unit_layers[u]) for u in order[:n]), "worst_cosine": c,
                         "met": c >= thresh} for n, c in trials]
    # every layer the promoted units hold: the data movement that carries a promoted tensor is 16-bit too
    report.update({"layers": [n for u in order[:k] for n in unit_layers[u]], "units": order[:k],
                   "overrides": overrides, "cosine_after": cos, "met": min(cos) >= thresh,
                   "selection": kind, "pruned": detail.get("pruned", []), "estimate_runs": detail.get("estimate_runs"),
                   "sensitivity": {u: detail["sensitivity"][u] for u in order[:k]},
                   "cost_after": _cost(result.model, cfg)})
    if not report["met"]:
        log.warning("auto hybrid: %d layer(s) promoted and the worst output cosine is %.5f < %.4f",
                    len(report["layers"]), min(cos), thresh)
    if result.package.metadata.get("quantization") is not None:
        result.package.metadata["quantization"]["auto_hybrid"] = {
            k_: report[k_] for k_ in ("threshold", "promote", "layers", "selection", "cosine_before", "cosine_after",
                                      "cost_before", "cost_after", "trials")}
    log.info("auto hybrid: %d layer(s) promoted, output cosine %s -> %s (target met: %s)", len(report["layers"]),
             report["cosine_before"], report["cosine_after"], report["met"])
    result.hybrid_report = report
    return result


def keep_float_overrides(float_model: onnx.ModelProto, keep_float: Sequence[str], cfg: BuildConfig
                         ) -> Dict[str, str]:
    """Layers to keep in float (node names of the built float graph, as the GUI's layer table lists them) ->
    QuantOptions.overrides with 'float'."""
    lmap = hq.layer_map(float_model, quant_options(cfg).requantized_pre_activations)
    out = {}
    for name in keep_float:
        if name not in lmap:
            raise ConfigError("keep_float", name, hint="not a quantized layer of the built graph")
        out.update({t: "float" for t in lmap[name]})
    return out
