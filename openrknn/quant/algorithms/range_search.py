"""Output-aware activation ranges: shrink an early tensor's range when the model's outputs say so.

Every activation algorithm picks a tensor's range from that tensor alone (its min/max, histogram KL or MSE). What
the outputs lose to a tensor's quantization also depends on what the rest of the network does with it: when a
few channels of an early tensor are much wider than the others, clipping them can cost less downstream than the
coarse steps they force on the narrow channels. Nothing local sees that (the next layer's own error is lowest
unclipped); the outputs do. Range split's part remap (split.py) already gives such narrow channels their own
levels; on top of it the search raises YOLOX-nano's output cosine but not its detections kept (bench/RESULTS.md):
the cosine does not always turn into detections, so the search is opt-in.

The search walks the scale groups in graph order (errors made early are amplified by every later layer), tries a
few shrink factors of each group's range on the complete quantized model, and keeps a factor only when the
outputs' error on the calibration samples drops by MIN_GAIN or more (without that rule, five small changes on
MobileNetV2 u8 lowered its held-out cosine). The searched groups' scales and zero points are fed to one
onnxruntime session as inputs, so a trial costs one run per sample and no rebuild.
"""

from __future__ import annotations

import itertools
import time
from typing import Dict, List, Sequence, Set

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..plan import Plan
from ..qdq import ActQuant, act_storage
from ..schemes import qparams

RATIOS = (0.5, 0.7, 0.85)  # shrink factors tried for each group's range
MIN_GAIN = 0.05            # relative drop of the calibration loss a factor must bring


def output_weights(float_outs: Sequence[List[np.ndarray]]) -> List[np.ndarray]:
    """Per output, 1 / variance of the float values: per last-axis channel when there are several positions (a
    detector's [N, 85] rows: boxes in pixels next to 0..1 scores), else over the whole output."""
    out = []
    for k in range(len(float_outs[0])):
        x = np.stack([o[k] for o in float_outs]).astype(np.float64)
        if x.ndim >= 2 and np.prod(x.shape[:-1]) > len(float_outs):
            v = x.reshape(-1, x.shape[-1]).var(axis=0)
        else:
            v = np.full(1, x.var())
        out.append(1.0 / np.maximum(v, 1e-12 * max(float(v.max()), 1e-30)))
    return out


def _group_order(plan: Plan) -> List[int]:
    seen, order = set(), []
    for t in plan.points:
        g = plan.group_of[t]
        if g not in seen:
            seen.add(g)
            order.append(g)
    return order


def _scaled(a: ActQuant, ratio: float) -> ActQuant:
    """The same format with the real range [lo, hi] shrunk by ``ratio`` (zero stays exact)."""
    lo = (a.fmt.qmin - a.zero_point) * a.scale
    hi = (a.fmt.qmax - a.zero_point) * a.scale
    scale, zp = qparams(np.float64(lo * ratio), np.float64(hi * ratio), a.fmt)
    return ActQuant(float(scale), int(zp), a.fmt)


def search_ranges(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, plan: Plan, acts: Dict[str, ActQuant],
                  data, exempt: Set[int], max_groups: int, samples: int, threads: int = 0,
                  progress: bool = True) -> Dict:
    """Shrink the ranges of up to ``max_groups`` early 8-bit scale groups (not in ``exempt``) of ``qmodel`` (the
    QDQ graph built from ``acts``) where the outputs gain; ``acts`` is updated in place. Returns a report."""
    from ...progress import progress_bar

    from ..calibrate import make_session

    t0 = time.perf_counter()
    inits = {i.name for i in qmodel.graph.initializer}
    groups: List[List[str]] = []
    for g in _group_order(plan):
        members = [t for t in plan.groups[g] if t in acts]
        if g in exempt or not members or acts[members[0]].fmt.bits != 8:
            continue
        if all(t + "__scale" in inits and t + "__zp" in inits for t in members):
            groups.append(members)
        if len(groups) >= max_groups:
            break
    feeds = list(itertools.islice(data, samples))
    if not groups or not feeds:
        return {"groups_tried": 0, "changed": {}}
    fsess = make_session(float_model, threads)
    float_outs = [fsess.run(None, f) for f in feeds]
    weights = output_weights(float_outs)

    # the searched groups' scales and zero points become graph inputs: one session for every trial
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    names = {t + s for members in groups for t in members for s in ("__scale", "__zp")}
    values: Dict[str, np.ndarray] = {}
    keep = []
    for init in m.graph.initializer:
        if init.name in names:
            values[init.name] = numpy_helper.to_array(init)
            m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    sess = make_session(m, threads)

    def loss(params: Dict[str, np.ndarray]) -> float:
        total = 0.0
        for feed, ref in zip(feeds, float_outs):
            outs = sess.run(None, {**feed, **params})
            total += sum(float(np.mean(np.square(o.astype(np.float64) - r) * w))
                         for o, r, w in zip(outs, ref, weights))
        return total / len(feeds)

    def params_of(members: List[str], a: ActQuant) -> Dict[str, np.ndarray]:
        dtype, shift = act_storage(a.fmt)
        out = {}
        for t in members:
            out[t + "__scale"] = np.asarray(a.scale, np.float32).reshape(values[t + "__scale"].shape)
            out[t + "__zp"] = np.asarray(a.zero_point + shift, dtype).reshape(values[t + "__zp"].shape)
        return out

    current = dict(values)
    best = start = loss(current)
    changed: Dict[str, float] = {}
    for members in progress_bar(groups, desc="range search", enabled=progress, leave=False):
        base = acts[members[0]]
        choice = None
        for r in RATIOS:
            trial = _scaled(base, r)
            value = loss({**current, **params_of(members, trial)})
            if value < best * (1 - MIN_GAIN) and (choice is None or value < choice[0]):
                choice = (value, r, trial)
        if choice is not None:
            best = choice[0]
            current.update(params_of(members, choice[2]))
            for t in members:
                acts[t] = choice[2]
            changed[members[0]] = choice[1]
    return {"groups_tried": len(groups), "samples": len(feeds), "changed": changed,
            "loss_before": round(start, 6), "loss_after": round(best, 6),
            "seconds": round(time.perf_counter() - t0, 3)}


__all__ = ["search_ranges", "output_weights", "RATIOS", "MIN_GAIN"]
