"""Which activation ranges a default build keeps: min/max, or a clipped set, judged on the model's outputs.

Min/max ('normal') lets the largest value seen set each scale: right for a tensor whose extremes carry the signal
(a classifier's confident logits, a detector's objects), wrong for one whose extremes are a few outliers (the
recognizers' attention blocks, a layout detector's neck), where clipping them gives the rest more levels. No
per-tensor statistic tells the two apart reliably: KL and MSE clipping each win on some models and lose on others
(bench/RESULTS.md). The outputs do. So a 'normal' build also computes the KL and MSE ranges (from histograms of the
first few calibration images), gives each candidate its own bias correction, and keeps the one whose outputs on a
few calibration samples are closest to the float model's, when it beats min/max clearly.

The candidates run on one onnxruntime session: the QDQ graph with every activation scale and zero point and every
bias a graph input, so a candidate costs one run per sample and no rebuild.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ...metrics import cosine
from ..ir import GraphInfo
from ..plan import Plan
from ..qdq import ActQuant, WeightQuant, act_storage, bias_integers, build_qdq

CANDIDATES = ("kl_divergence", "mmse")
MARGIN = 0.1      # a clipped set must take at least this share of min/max's output error away to replace it
MIN_GAIN = 1e-3   # ... and at least this much of it (1 - cosine): below, the few samples cannot tell them apart
TINY_LOSS = 1e-4  # ... except where min/max's whole loss is below this (outputs at cosine 0.9999 already: a
RELATIVE_GAIN = 0.2  # super-resolution net's image), with no MIN_GAIN left to gain: there a set that takes this
                  # share of the error away (and MARGIN of it on most samples) is kept. Only there: as the rule
                  # wherever MIN_GAIN is the larger, it moved classifiers and a detector on held-out images
MIN_WINS = 0.5    # ... and win on at least this share of the samples, not on average only: take MARGIN of
                  # min/max's error away on each of them (a sample a candidate is a few percent better on is a
                  # draw; counted as a win, it let one clear sample out of four decide, and the clipped set lost
                  # on held-out inputs). A decoder that feeds its own argmax back diverges on some inputs whatever
                  # the ranges, so one sample decides a mean: such a model (a Loop) skips range choice
                  # (pipeline.decodes_step_by_step). With that, half is enough: a recognizer whose clipped set
                  # wins two of four samples by 3x keeps it on held-out inputs too.


def clear_gain(before: float, after: float, min_gain: float = MIN_GAIN) -> bool:
    """Whether the model-wide loss drop from ``before`` to ``after`` is large enough to act on (MIN_GAIN; below
    TINY_LOSS, RELATIVE_GAIN)."""
    return before - after >= (RELATIVE_GAIN * before if before < TINY_LOSS else min_gain)


def wins(losses: np.ndarray, baseline: np.ndarray, margin: float = MARGIN) -> int:
    """The samples on which ``losses`` take at least ``margin`` of ``baseline``'s error away."""
    return int(np.sum(losses <= (1.0 - margin) * baseline))


def output_losses(outputs: Sequence[List[np.ndarray]], reference: Sequence[List[np.ndarray]]) -> np.ndarray:
    """[samples, outputs] of 1 - cosine."""
    return np.array([[1.0 - cosine(r, o) for r, o in zip(ref, out)] for ref, out in zip(reference, outputs)])


def sample_losses(outputs: Sequence[List[np.ndarray]], reference: Sequence[List[np.ndarray]]) -> np.ndarray:
    """Per sample, 1 - the worst output's cosine (what the corpus bench scores). An output assembled in float from
    parts with their own scales (a detector's boxes, objectness and classes) is measured part by part (see
    CandidateModel.measured): the boxes' pixel values would otherwise hide any change in the scores."""
    return output_losses(outputs, reference).max(axis=1)


def output_loss(outputs: Sequence[List[np.ndarray]], reference: Sequence[List[np.ndarray]]) -> float:
    """Mean over samples of sample_losses."""
    return float(np.mean(sample_losses(outputs, reference)))


class CandidateModel:
    """The QDQ graph of one candidate with its activation parameters and biases turned into graph inputs, so any
    candidate (same points, same weights) runs on the same session."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, acts: Dict[str, ActQuant],
                 weights: Dict[int, WeightQuant], threads: int = 0, extra: Sequence[str] = ()):
        """extra: more tensors the session outputs (score bias correction reads the heads' logits from the chosen
        candidate's runs)."""
        from ..calibrate import make_session

        from ..hybrid import measured_tensors
        from ..qdq import with_outputs

        qmodel, _ = build_qdq(model, plan, acts, weights)
        self.measured = measured_tensors(qmodel, model)
        self.extra = [t for t in extra if t not in self.measured]
        self.asked = list(extra)  # recorded in this order (a head's logits may be a measured tensor too)
        qmodel = with_outputs(qmodel, self.measured + self.extra)
        g = qmodel.graph
        inits = {t.name: t for t in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        self.act_inputs: Dict[str, Tuple[str, str]] = {}   # point -> (scale input, zero point input)
        for n in g.node:
            if n.op_type != "DequantizeLinear" or n.input[0] in inits:
                continue
            q = producer.get(n.input[0])
            point = n.output[0] if n.output[0] in acts else (q.input[0] if q is not None else None)
            if point in acts and n.input[1] in inits and n.input[2] in inits:
                self.act_inputs[point] = (n.input[1], n.input[2])
        self.bias_inputs: Dict[int, str] = {}               # weighted node index -> its bias input
        by_name = {n.name: n for n in g.node}
        drop = set()
        for w in plan.weighted:
            node = by_name.get(model.graph.node[w.node].name)
            if w.node not in weights or node is None or len(node.input) < 3 or node.input[2] not in producer:
                continue
            dq = producer[node.input[2]]
            if dq.op_type == "DequantizeLinear" and all(i in inits for i in dq.input):
                self.bias_inputs[w.node] = node.input[2]
                drop.add(id(dq))
        names = {s for pair in self.act_inputs.values() for s in pair}
        for name in sorted(names):
            t = inits[name]
            g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        for name in self.bias_inputs.values():
            g.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        keep = [t for t in g.initializer if t.name not in names]
        del g.initializer[:]
        g.initializer.extend(keep)
        nodes = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(nodes)
        self.plan = plan
        self.x_of = {w.node: w.x for w in plan.weighted}
        self.sess = make_session(qmodel, threads)
        # what choose() saw of the extra tensors: {"float": per feed, candidate name: per feed}
        self.recorded: Dict[str, List[list]] = {}
        # and of the measured ones: the float model's per feed, each candidate's [feeds, outputs] losses
        self.reference: List[list] = []
        self.output_losses: Dict[str, np.ndarray] = {}

    def feed(self, acts: Dict[str, ActQuant], weights: Dict[int, WeightQuant], model: onnx.ModelProto
             ) -> Dict[str, np.ndarray]:
        """The inputs that make the session compute the candidate (``acts``; ``weights``' biases)."""
        out: Dict[str, np.ndarray] = {}
        for point, (s_name, z_name) in self.act_inputs.items():
            a = acts[point]
            dtype, shift = act_storage(a.fmt)
            out[s_name] = np.asarray(a.scale, np.float32)
            out[z_name] = np.asarray(a.zero_point + shift, dtype)
        info: Optional[GraphInfo] = None
        for k, name in self.bias_inputs.items():
            wq = weights[k]
            bias = wq.bias
            if bias is None:
                info = info or GraphInfo(model)
                w = next(w for w in self.plan.weighted if w.node == k)
                bias = info.const(w.bias) if w.bias else np.zeros(np.shape(wq.scale) or (1,), np.float32)
            bq, scale = bias_integers(np.asarray(bias), acts.get(self.x_of[k]), wq)
            out[name] = bq.astype(np.float32) * scale
        return out

    def run(self, feeds: Sequence[Dict[str, np.ndarray]], params: Dict[str, np.ndarray],
            names: Optional[Sequence[str]] = None) -> List[list]:
        """The measured tensors (or ``names``) of each feed."""
        return [self.sess.run(list(names or self.measured), {**f, **params}) for f in feeds]


def reference_session(model: onnx.ModelProto, runner: CandidateModel, threads: int = 0):
    """The float model's session for ``runner``'s measured and extra tensors."""
    from ..calibrate import make_session
    from ..qdq import with_outputs

    return make_session(with_outputs(model, runner.measured + runner.extra), threads)


def choose(model: onnx.ModelProto, plan: Plan, candidates: Dict[str, Dict[str, ActQuant]],
           weights: Dict[int, WeightQuant], set_biases, data, samples: int, threads: int = 0,
           margin: float = MARGIN, min_gain: float = MIN_GAIN, runner: Optional[CandidateModel] = None,
           ref_sess=None) -> Tuple[str, Dict[str, float], Dict[str, np.ndarray]]:
    """The candidate to keep among ``candidates`` ({name: activation parameters}; the first is min/max, the
    default), each one's mean loss on the first ``samples`` samples of ``data`` and its loss per sample.
    ``set_biases(name)`` puts that candidate's corrected biases into ``weights``. ``runner`` / ``ref_sess``: the
    sessions to judge on (CandidateModel / reference_session), when the caller runs them again afterwards."""
    feeds = list(itertools.islice(data, samples))
    default = next(iter(candidates))
    runner = runner or CandidateModel(model, plan, candidates[default], weights, threads)
    ref_sess = ref_sess or reference_session(model, runner, threads=threads)
    n = len(runner.measured)
    names = runner.measured + runner.extra  # the extra tensors ride along, recorded for the caller
    asked = [names.index(t) for t in runner.asked]
    reference = [ref_sess.run(names, f) for f in feeds]
    runner.recorded = {"float": [[r[k] for k in asked] for r in reference]}
    reference = [r[:n] for r in reference]
    runner.reference, runner.output_losses = reference, {}
    per_sample = {}
    for name, acts in candidates.items():
        set_biases(name)
        outs = runner.run(feeds, runner.feed(acts, weights, model), names)
        runner.recorded[name] = [[o[k] for k in asked] for o in outs]
        runner.output_losses[name] = output_losses([o[:n] for o in outs], reference)
        per_sample[name] = runner.output_losses[name].max(axis=1)
    losses = {k: float(v.mean()) for k, v in per_sample.items()}
    best = min(losses, key=losses.get)
    if best != default and losses[best] <= (1.0 - margin) * losses[default] and \
            clear_gain(losses[default], losses[best], min_gain) and \
            wins(per_sample[best], per_sample[default], margin) >= MIN_WINS * len(feeds):
        return best, losses, per_sample
    return default, losses, per_sample


def private_groups(info: GraphInfo, plan: Plan, measured: Sequence[str]) -> Dict[str, List[int]]:
    """Measured tensor -> the scale groups whose every member reaches that tensor and no other measured one (a
    head's own layers). Changing such a group's ranges changes that output only. Empty for a model with control
    flow (a Loop body reads outer tensors by name, so reachability would miss it)."""
    from ...graph.names import subgraphs

    if any(any(True for _ in subgraphs(n)) for n in info.nodes):
        return {}
    index = {t: k for k, t in enumerate(measured)}
    reach: Dict[str, set] = {t: {k} for t, k in index.items()}
    for node in reversed(info.nodes):  # topological order: every reader of an output is seen before its node
        below = set()
        for o in node.output:
            below |= reach.get(o, set())
        for x in node.input:
            if x:
                reach.setdefault(x, set()).update(below)
    out: Dict[str, List[int]] = {}
    for g, members in plan.groups.items():
        seen = set()
        for t in members:
            seen |= reach.get(t, set())
        if len(seen) == 1:
            out.setdefault(measured[next(iter(seen))], []).append(g)
    return out


def choose_per_output(model: onnx.ModelProto, plan: Plan, info: GraphInfo, chosen: str,
                      candidates: Dict[str, Dict[str, ActQuant]], weights: Dict[int, WeightQuant], set_biases,
                      set_layer_biases, runner: CandidateModel, ref_sess, data, margin: float = MARGIN,
                      min_gain: float = MIN_GAIN) -> Tuple[Dict[str, ActQuant], Dict[str, str]]:
    """After the model-wide choice (``chosen``): each output's own layers (private_groups) may take another
    candidate's ranges where that output alone prefers them by the same margins: IS-Net's mask logits want their
    range clipped where its exposed decoder features, judged in the same worst output, want min/max. Every candidate
    switches all private groups at once: a private group moves its own output only, so one run per candidate gives
    each output's loss under it. ``data``: the samples choose() judged on (its runs of ``chosen`` are reused when
    ``runner`` holds them). Returns the activation parameters
    (``candidates[chosen]`` with the switched groups) and {output: candidate} for the switched ones; leaves
    ``weights``' biases set for them. ``set_layer_biases(name, inputs)``: that candidate's corrected biases for the
    layers reading ``inputs``."""
    base = candidates[chosen]
    # one output: its own layers are the whole model, which choose() has judged already
    private = private_groups(info, plan, runner.measured) if len(runner.measured) > 1 else {}
    if not private:
        return base, {}
    feeds = list(data)
    reference = runner.reference or [ref_sess.run(runner.measured, f) for f in feeds]

    def per_output(acts: Dict[str, ActQuant]) -> np.ndarray:
        return output_losses(runner.run(feeds, runner.feed(acts, weights, model)), reference)

    def members(groups) -> List[str]:
        return [t for g in groups for t in plan.groups[g]]

    def mixed(parts: Dict[str, str]) -> Dict[str, ActQuant]:
        acts = dict(base)
        for out, name in parts.items():
            acts.update({t: candidates[name][t] for t in members(private[out]) if t in candidates[name]})
        return acts

    def bias_for(parts: Dict[str, str]) -> None:
        set_biases(chosen)
        for out, name in parts.items():
            set_layer_biases(name, set(members(private[out])))

    set_biases(chosen)
    base_loss = runner.output_losses[chosen] if chosen in runner.output_losses else per_output(base)
    k_of = {t: k for k, t in enumerate(runner.measured)}
    best: Dict[str, Tuple[str, float]] = {}
    for name in candidates:
        if name == chosen:
            continue
        trial = {out: name for out in private}
        acts = mixed(trial)
        # the same ranges on every output's own layers: nothing to judge
        if all((a.scale, a.zero_point) == (base[t].scale, base[t].zero_point) for t, a in acts.items()):
            continue
        bias_for(trial)
        loss = per_output(acts)
        for out in private:
            k = k_of[out]
            was, now = float(base_loss[:, k].mean()), float(loss[:, k].mean())
            if now <= (1.0 - margin) * was and was - now >= min_gain and \
                    wins(loss[:, k], base_loss[:, k], margin) >= MIN_WINS * len(feeds) and \
                    now < best.get(out, (None, was))[1]:
                best[out] = (name, now)
    parts = {out: name for out, (name, _) in best.items()}
    bias_for(parts)
    return mixed(parts), parts


__all__ = ["CANDIDATES", "MARGIN", "MIN_GAIN", "MIN_WINS", "RELATIVE_GAIN", "TINY_LOSS", "clear_gain",
           "CandidateModel", "choose", "choose_per_output", "wins", "output_loss", "output_losses", "private_groups",
           "reference_session", "sample_losses"]
