"""A narrow Concat input that other layers also read keeps a scale of its own.

A Concat's inputs share its output's scale (plan.py): the NPU then copies them without requantizing. When one input
spans a small part of the concat's range and other layers read it too, that shared scale is all those layers get:
DeepCut's character embedding spans 1/100 of the range of the concat that joins it to conv features, and twelve convs
read it in a few integer steps. After calibration pass 1 such an input is detached from the Concat's scale group: it
keeps its own range, and the Concat requantizes it onto the output's scale (one more rounding, on the Concat's side
only, which the shared scale rounded just as coarsely). The Concat output takes the range of the values it holds, its
inputs' ranges joined.

A tensor that several Concats join links their groups into one: AGLLNet, a low-light enhancer, joins its attention
map to ten other tensors in seven Concats, and the chain put its input image, the map and the decoder's features on
one scale four times the image's range (23.0 dB against the float picture, rknn-toolkit2 36.9). Such a tensor is
detached from one bit of lost resolution on.
"""

from __future__ import annotations

import logging
from typing import Dict, FrozenSet, List, Optional, Tuple

from ..ir import GraphInfo
from ..plan import Plan, build_plan
from ..stages import QuantState, Rewrite, StageResult

log = logging.getLogger("openrknn.quant")

# an input is detached when sharing the concat's scale would cost it at least this factor of resolution (3 bits):
# YOLOX's concat inputs span 1.0-1.8x of their groups (no change there), DeepCut's embedding 1/103
MIN_RATIO = 8.0
# a tensor several Concats join (a dense block reusing its features, AGLLNet's attention map) would chain their groups
# into one scale for all of them: from one bit on, it keeps its own scale at each
MIN_RATIO_SHARED = 2.0
# Both are bits of resolution lost, whatever the points' width: 16-bit points keep 16 bits' worth. A diffusion UNet's
# first conv (a range of 6) joins its decoder's last features (a range of 4e9) in a skip Concat, where one shared
# 16-bit scale gave that conv a step of 6e4, and each encoder block's output (4e5) joins features 300x wider.


def _width(lo: float, hi: float) -> float:
    return max(hi, 0.0) - min(lo, 0.0)  # the quantized range always holds zero


def group_ranges(plan: Plan, minmax: Dict[str, Tuple[float, float]]) -> Dict[int, Tuple[float, float]]:
    """Each scale group's calibrated range: the union of its measured members (the derived ones lie inside)."""
    out: Dict[int, Tuple[float, float]] = {}
    for g, members in plan.groups.items():
        have = [minmax[t] for t in members if t in minmax]
        if have:
            out[g] = (min(r[0] for r in have), max(r[1] for r in have))
    return out


def narrow_inputs(info: GraphInfo, plan: Plan, minmax: Dict[str, Tuple[float, float]],
                  ranges: Optional[Dict[int, Tuple[float, float]]] = None,
                  min_ratio: float = MIN_RATIO) -> List[Tuple[str, str, float]]:
    """(concat output, input, range ratio) for each Concat input that other nodes read too and whose measured range
    is at most 1/``min_ratio`` of its scale group's. ``ranges``: group_ranges(plan, minmax), when already made."""
    ranges = group_ranges(plan, minmax) if ranges is None else ranges
    found: List[Tuple[str, str, float]] = []
    for i, node in enumerate(info.nodes):
        out = node.output[0] if node.output else ""
        if node.op_type != "Concat" or out not in plan.group_of or plan.group_of[out] not in ranges:
            continue
        group = _width(*ranges[plan.group_of[out]])
        for t in dict.fromkeys(node.input):
            if plan.group_of.get(t) != plan.group_of[out] or t not in minmax:
                continue
            if not any(c != i for c in info.consumers.get(t, [])) and t not in info.output_set:
                continue  # the concat is its only reader: the output's scale rounds it anyway
            ratio = group / max(_width(*minmax[t]), 1e-30)
            if ratio >= _threshold(info, t, min_ratio):
                found.append((out, t, ratio))
    return found


def _threshold(info: GraphInfo, t: str, min_ratio: float) -> float:
    """The range ratio from which input ``t`` is detached."""
    if sum(info.nodes[c].op_type == "Concat" for c in set(info.consumers.get(t, []))) >= 2:
        return min(min_ratio, MIN_RATIO_SHARED)
    return min_ratio


class ConcatInputScales(Rewrite):
    """Detach narrow, shared Concat inputs from the Concat's scale group (the plan changes; the graph does not)."""

    name = "concat_input_scales"

    def enabled(self, state: QuantState) -> bool:
        act = state.scheme.act
        # dynamic fixed point shares power-of-two grids by design (pow2_fit fills them)
        return bool(state.options.concat_input_scales) and act is not None and not act.pow2

    def apply(self, state: QuantState) -> Optional[StageResult]:
        stats, plan = state.stats, state.plan
        ranges = group_ranges(plan, stats.minmax)
        found = narrow_inputs(state.info, plan, stats.minmax, ranges)
        if not found:
            return None
        pairs: FrozenSet[Tuple[str, str]] = plan.detached | {(out, t) for out, t, _ in found}
        new = build_plan(state.info, state.options.keep_mixed_concat_float,
                         state.options.requantized_pre_activations, pairs, plan.host_heads)
        for out, _t, _r in found:
            if out in new.derived or out in stats.minmax:
                continue
            # measured as its inputs' ranges joined: the values it holds. (The old group's range can be far wider:
            # a chain of concats sharing inputs, which the detached inputs no longer join.)
            parts = [stats.minmax[t] for t in state.info.nodes[state.info.producer[out]].input if t in stats.minmax]
            stats.minmax[out] = (min(r[0] for r in parts), max(r[1] for r in parts)) if parts else \
                ranges[plan.group_of[out]]
        state.plan = new
        log.info("own scale for %d narrow concat input(s) that other layers read: %s", len(found),
                 ", ".join(f"{t} (1/{r:.0f} of {out})" for out, t, r in found))
        return StageResult(self.name, {"detached": [{"concat_output": out, "input": t, "range_ratio": round(r, 1)}
                                                    for out, t, r in found]})
