"""The quantizer's stage interface: the state the stages share, what a stage asks calibration for, and its result.

A rewrite stage changes the graph without changing its float function (equalisation, range split, power-of-two
fitting). It declares the pass-1 statistics it needs (``needs``), then ``apply`` rewrites ``state.model``, keeps
``state.stats`` true for the new graph and returns a ``StageResult``. The pipeline gathers every stage's needs into one
calibration pass and builds the report from the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np
import onnx

from .calibrate import Stats
from .ir import GraphInfo
from .plan import Plan, build_plan
from .schemes import Scheme

if TYPE_CHECKING:
    from . import QuantOptions


@dataclass
class QuantState:
    """What flows from stage to stage: the current graph with its indexes, and what calibration measured on it."""

    model: onnx.ModelProto
    info: GraphInfo
    plan: Plan
    options: "QuantOptions"
    scheme: Scheme
    data: object  # CalibrationData or a list of feeds
    progress: bool
    stats: Stats = field(default_factory=Stats)

    @property
    def per_channel(self) -> bool:
        return self.options.resolved_method == "channel"

    def replace_model(self, model: onnx.ModelProto) -> None:
        """A rewrite produced a new graph: index it and plan its quantization points again."""
        self.model = model
        self.info = GraphInfo(model)
        self.plan = build_plan(self.info, self.options.keep_mixed_concat_float,
                               self.options.requantized_pre_activations, self.plan.detached, self.plan.host_heads)


@dataclass
class Needs:
    """Pass-1 statistics a stage asks for, beyond every point's min/max.

    channel_ranges: tensors whose per-channel (axis 1) min/max it needs (NCHW, or a Conv1D's NCL).
    channel_samples: NCHW tensors whose values at a few positions of the first images it needs.
    channel_means: {tensor: reduce axes} whose per-channel means it needs.
    """

    channel_ranges: List[str] = field(default_factory=list)
    channel_samples: List[str] = field(default_factory=list)
    channel_means: Dict[str, Sequence[int]] = field(default_factory=dict)

    def merge(self, other: "Needs") -> "Needs":
        return Needs(list(dict.fromkeys(self.channel_ranges + other.channel_ranges)),
                     list(dict.fromkeys(self.channel_samples + other.channel_samples)),
                     {**self.channel_means, **other.channel_means})


@dataclass
class StageResult:
    """What a stage did: a summary for the report, and the per-channel records the QDQ graph carries so accuracy
    analysis can undo the rewrite (channel factors, offsets, orders)."""

    name: str
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    channel_scales: Dict[str, np.ndarray] = field(default_factory=dict)
    channel_offsets: Dict[str, np.ndarray] = field(default_factory=dict)
    channel_orders: Optional[dict] = None
    node_origins: Dict[str, str] = field(default_factory=dict)  # node a rewrite made -> node it was made from
    channel_parts: Dict[str, tuple] = field(default_factory=dict)  # part tensor -> (tensor, its channels)


class Rewrite:
    """Base of the graph-rewrite stages. ``phase``: 'graph' runs before calibration (it needs only the weights);
    'statistics' runs after calibration pass 1 and reads its statistics."""

    name = "rewrite"
    phase = "statistics"

    def enabled(self, state: QuantState) -> bool:
        return True

    def needs(self, state: QuantState) -> Needs:
        return Needs()

    def apply(self, state: QuantState) -> Optional[StageResult]:
        raise NotImplementedError

    def run(self, state: QuantState) -> Optional[StageResult]:
        t = time.perf_counter()
        result = self.apply(state)
        if result is not None:
            result.seconds = round(time.perf_counter() - t, 3)
        return result
