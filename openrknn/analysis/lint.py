"""The NPU design checker: the seed's advice and the chip tables turned into findings (`openrknn check MODEL`).

Each rule is a small function registered in `RULES`; it reads the logical graph (graph_info), the chip table and the
build facts, and yields `Finding`s: severity, layer, rule, why, what to do. Findings speak the user's layer names
(analysis.layer_names): the parts the quantizer cut one layer into give one finding for that layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..targets.chips import ChipSpec, Generation, chip, placement
from ..targets.schemes import DTYPE_BYTES, get_scheme
from .fusion import fuse, maxpool_fusion_problems
from .graph_info import GraphInfo, Layer, analyze
from .layer_names import LayerNames, layer_names

SEVERITIES = ("error", "warning", "info")
MIN_CALIBRATION_IMAGES = 100     # seed: 100-500 representative images
FIRST_LAYER_COSINE = 0.98        # FACTS.md: below this, suspect mean/std/channel order


@dataclass
class Finding:
    severity: str      # error | warning | info
    rule: str
    layer: str         # the user's layer name, or "" for model-wide findings
    op_type: str
    why: str
    what_to_do: str
    parts: list[str] = field(default_factory=list)  # the built graph's nodes of that layer, when not just itself


@dataclass
class Context:
    model: onnx.ModelProto
    gi: GraphInfo
    spec: ChipSpec
    quant_dtype: Optional[str]
    calib_count: Optional[int]
    first_layer_cosine: Optional[float]
    fused: dict[int, int]
    mean_values: Optional[list] = None   # config(): one list per input, model channel order, 0..255 scale
    std_values: Optional[list] = None
    names: LayerNames = field(default_factory=LayerNames)

    def name(self, layer: Layer) -> str:
        """The user's name of a layer, for the text of a finding."""
        return self.names.of(layer.name)

    @property
    def gen(self) -> Generation:
        return self.spec.gen

    def initializer(self, name: str) -> Optional[np.ndarray]:
        for i in self.model.graph.initializer:
            if i.name == name:
                return numpy_helper.to_array(i)
        return None


Rule = Callable[[Context], Iterable[Finding]]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return deco


def _conv_geometry(layer: Layer, gi: GraphInfo) -> tuple[list[int], list[int], list[int], list[int], int, int]:
    """kernel, strides, pads, dilations, group, input channels of a conv."""
    w = gi.weights[layer.weights[0]].shape if layer.weights else ()
    kernel = list(layer.attrs.get("kernel_shape") or w[2:] or [1, 1])
    nd = len(kernel)
    strides = list(layer.attrs.get("strides") or [1] * nd)
    pads = list(layer.attrs.get("pads") or [0] * (2 * nd))
    dil = list(layer.attrs.get("dilations") or [1] * nd)
    group = int(layer.attrs.get("group", 1))
    cin = gi.tensors[layer.inputs[0]].shape[1] if layer.inputs and len(gi.tensors[layer.inputs[0]].shape) > 1 else 0
    return kernel, strides, pads, dil, group, cin


def _is_depthwise(layer: Layer, gi: GraphInfo) -> bool:
    if layer.op_type != "Conv" or not layer.weights:
        return False
    w = gi.weights[layer.weights[0]].shape
    group = int(layer.attrs.get("group", 1))
    return group > 1 and len(w) > 1 and w[1] == 1


def _compute_layers(ctx: Context, *ops: str) -> Iterator[Layer]:
    for layer in ctx.gi.layers:
        if layer.role == "compute" and (not ops or layer.op_type in ops):
            yield layer


def _is_8bit(ctx: Context) -> bool:
    acts = [ctx.gi.tensors[t].dtype for layer in _compute_layers(ctx) for t in layer.outputs]
    return any(DTYPE_BYTES.get(d, 4) == 1 for d in acts)


# ---------------------------------------------------------------------------------------------------------------------
def host_branch(model: onnx.ModelProto, gi: GraphInfo) -> set[str]:
    """Names of the layers a build computes on the board's CPU in float before the NPU runs: a conditioning branch
    of small inputs (quant/plan.host_conditioning), read from the package's quantization for a built model, from the
    plan for a float one."""
    from ..quant.ir import GraphInfo as PlanInfo
    from ..quant.ir import normalize
    from ..quant.plan import CONDITION_MAX, host_conditioning
    from .perf import host_head

    if gi.quantized:
        return {gi.layers[i].name for i in host_head(gi)}
    if not any(t in gi.tensors and gi.tensors[t].known and gi.tensors[t].numel <= CONDITION_MAX for t in gi.inputs):
        return set()  # no small input: no branch, and no copy of the model with its shapes inferred to find none
    info = PlanInfo(normalize(model))
    branch = host_conditioning(info)
    return {layer.name for layer in gi.layers if layer.outputs and all(t in branch for t in layer.outputs)}


@rule("op-support")
def _op_support(ctx: Context) -> Iterator[Finding]:
    branch = host_branch(ctx.model, ctx.gi)
    if branch:
        ops = sorted({layer.op_type for layer in ctx.gi.layers if layer.name in branch})
        yield Finding("info", "op-support", "", "",
                      f"{len(branch)} layer(s) computed only from small inputs ({', '.join(ops)}) run on the board's "
                      "CPU in float before the NPU (a conditioning branch: a noise level's or a label's embedding); "
                      "what they hand the NPU is quantized",
                      "nothing to do: no NPU -> CPU round trip, and no int8 rounding inside the branch")
    for layer in _compute_layers(ctx):
        if layer.name in branch:
            continue
        where = placement(layer.op_type, ctx.gen.name)
        if where == "unsupported":
            yield Finding("error", "op-support", layer.name, layer.op_type,
                          f"{layer.op_type} is neither an NPU op nor a known CPU fallback on {ctx.spec.name} "
                          f"({ctx.gen.name})",
                          "replace it with supported ops before export, or move it out of the model into "
                          "post-processing code")
        elif where == "cpu":
            yield Finding("warning", "op-support", layer.name, layer.op_type,
                          f"{layer.op_type} is not on the {ctx.spec.name} NPU: the graph falls back to the CPU here, "
                          f"copying activations NPU -> CPU -> NPU",
                          "move it to the end of the model (post-processing) or replace it with NPU ops")
        if layer.op_type in ("LSTM", "GRU") and ctx.gen.name == "rknpu2":
            yield from _recurrent_limits(ctx, layer)


def _recurrent_limits(ctx: Context, layer: Layer) -> Iterator[Finding]:
    """rknn-toolkit2's op list: LSTM and GRU at batch size 1 only, and an LSTM without input_forget."""
    x = ctx.gi.tensors[layer.inputs[0]].shape
    batch = x[0 if layer.attrs.get("layout", 0) else 1] if len(x) == 3 else 1
    problems = [f"batch {batch}"] if batch != 1 else []
    if layer.op_type == "LSTM" and layer.attrs.get("input_forget", 0):
        problems.append("input_forget=1 (coupled input and forget gates)")
    if problems:
        yield Finding("error", "op-support", layer.name, layer.op_type,
                      f"rknn-toolkit2 takes a {layer.op_type} at batch size 1"
                      f"{' without input_forget' if layer.op_type == 'LSTM' else ''} only: " + "; ".join(problems),
                      "export the recurrent part at batch 1 (run the sequences one after another)"
                      + ("; untie the LSTM's input and forget gates" if "input_forget" in " ".join(problems) else ""))


@rule("conv-limits")
def _conv_limits(ctx: Context) -> Iterator[Finding]:
    lim = ctx.gen.conv
    for layer in _compute_layers(ctx, "Conv", "ConvTranspose"):
        kernel, strides, pads, dil, group, _ = _conv_geometry(layer, ctx.gi)
        problems = []
        if lim.kernel_max_per_stride is not None:
            for k, s in zip(kernel, strides):
                if not lim.kernel_min <= k <= lim.kernel_max_per_stride * s - 1:
                    problems.append(f"kernel {k} with stride {s} (allowed {lim.kernel_min}.."
                                    f"{lim.kernel_max_per_stride * s - 1} = {lim.kernel_max_per_stride}*stride-1)")
        if lim.kernel_max is not None and any(not lim.kernel_min <= k <= lim.kernel_max for k in kernel):
            problems.append(f"kernel {kernel} (allowed {lim.kernel_min}-{lim.kernel_max})")
        if lim.stride_max is not None and any(s > lim.stride_max for s in strides):
            problems.append(f"stride {strides} (allowed 1-{lim.stride_max})")
        if lim.pad_max is not None and any(p > lim.pad_max for p in pads):
            problems.append(f"padding {pads} (allowed 0-{lim.pad_max})")
        if lim.dilation_max is not None and any(d > lim.dilation_max for d in dil):
            problems.append(f"dilation {dil} (allowed 1-{lim.dilation_max})")
        if lim.depthwise_kernel_max is not None and _is_depthwise(layer, ctx.gi) \
                and any(k > lim.depthwise_kernel_max for k in kernel):
            problems.append(f"depthwise kernel {kernel} (allowed 1-{lim.depthwise_kernel_max})")
        if problems:
            yield Finding("error", "conv-limits", layer.name, layer.op_type,
                          f"outside the {ctx.gen.name} conv limits: " + "; ".join(problems),
                          "split the kernel into smaller convs (e.g. stacked 3x3), or lower stride/padding/dilation")


@rule("kernel-3x3")
def _kernel_3x3(ctx: Context) -> Iterator[Finding]:
    for layer in _compute_layers(ctx, "Conv"):
        kernel, *_ = _conv_geometry(layer, ctx.gi)
        if all(k == 1 for k in kernel) or kernel == [3, 3] or _is_depthwise(layer, ctx.gi):
            continue
        shape = "x".join(map(str, kernel))
        extra = " Asymmetric kernels cost extra overhead." if len(set(kernel)) > 1 else ""
        yield Finding("info", "kernel-3x3", layer.name, layer.op_type,
                      f"{shape} kernel: 3x3 convs get the best MAC utilisation on the NPU.{extra}",
                      f"where accuracy allows, use 3x3 (two stacked 3x3 cover a 5x5 field) instead of {shape}")


@rule("activation-fusion")
def _activation_fusion(ctx: Context) -> Iterator[Finding]:
    gi, gen = ctx.gi, ctx.gen
    silus: list[Layer] = []
    for layer in _compute_layers(ctx):
        if not layer.inputs or layer.index in ctx.fused:
            continue
        prod = gi.producer(layer.inputs[0])
        if prod is None or prod.op_type != "Conv":
            continue
        if layer.op_type == "Mul" and any(gi.layers[i].op_type == "Sigmoid" for i, h in ctx.fused.items()
                                          if h == layer.index):
            silus.append(layer)
            continue
        if layer.op_type not in ("Relu", "Clip", "PRelu", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid",
                                 "Tanh", "Elu"):
            continue
        if layer.op_type in gen.fused_activations:
            why = f"{layer.op_type} after conv {ctx.name(prod)} is not fused: the conv output has " \
                  f"{len(gi.tensors[layer.inputs[0]].consumers)} readers"
            todo = "let the activation be the conv output's only reader (branch after the activation)"
        else:
            why = f"{layer.op_type} after conv {ctx.name(prod)} does not fuse on {gen.name}: it costs a pass over " \
                  f"the activation in memory (fusable: {', '.join(sorted(gen.fused_activations))})"
            todo = "use ReLU (fuses into the conv) where accuracy allows"
        yield Finding("warning", "activation-fusion", layer.name, layer.op_type, why, todo)
    if silus:
        # one model-wide note: a SiLU network has dozens of them (counted in the user's layers, not split parts)
        users = list(dict.fromkeys(ctx.name(s) for s in silus))
        names = ", ".join(users[:3]) + (", ..." if len(users) > 3 else "")
        yield Finding("info", "activation-fusion", "", "SiLU",
                      f"{len(users)} SiLU activations (x*sigmoid(x)) after convs ({names}) do not fuse into the conv: "
                      f"each costs a pass over its activation, and 8-bit quantization adds noise at the sigmoid and "
                      f"the multiply",
                      "the ReLU variant of the architecture runs faster on the NPU and quantizes better")


@rule("maxpool-fusion")
def _maxpool_fusion(ctx: Context) -> Iterator[Finding]:
    if not ctx.gen.fuses_max_pool:
        return
    for layer in _compute_layers(ctx, "MaxPool"):
        if layer.index in ctx.fused:
            continue
        prod = ctx.gi.producer(layer.inputs[0]) if layer.inputs else None
        host = ctx.fused.get(prod.index, prod.index) if prod is not None else None
        if host is None or ctx.gi.layers[host].op_type != "Conv":
            continue
        problems = maxpool_fusion_problems(layer, ctx.gi)
        if not problems and len(ctx.gi.tensors[layer.inputs[0]].consumers) > 1:
            problems = ["the conv output has other readers besides the pool"]
        yield Finding("warning", "maxpool-fusion", layer.name, layer.op_type,
                      "max-pool does not fuse into the conv before it: " + "; ".join(problems),
                      "use a 2x2 pool on an even input or a 3x3 pool on an odd input (not 1, width < 64 for 8-bit, "
                      "< 32 for 16-bit), stride 2 and no padding")


@rule("depthwise-int8")
def _depthwise_int8(ctx: Context) -> Iterator[Finding]:
    if not _is_8bit(ctx):
        return
    gi = ctx.gi
    for layer in _compute_layers(ctx, "Conv"):
        if not _is_depthwise(layer, gi):
            continue
        notes = []
        nxt = gi.consumers(layer.outputs[0]) if layer.outputs else []
        if any(c.op_type == "Sigmoid" for c in nxt) and any(c.op_type == "Mul" for c in nxt):
            notes.append("it is followed by SiLU: use ReLU instead")
        elif any(c.op_type in ("Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid", "PRelu", "BatchNormalization")
                 for c in nxt):
            notes.append(f"it is followed by {nxt[0].op_type}: drop BN/activation after depthwise convs")
        w = ctx.initializer(layer.weights[0]) if layer.weights else None
        if w is not None and w.dtype.kind == "f" and w.ndim == 4 and not _per_channel(ctx, layer):
            rng = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            rng = rng[rng > 0]
            if rng.size > 1:
                spread = float(rng.max() / rng.min())
                if spread > 10:
                    notes.append(f"its per-channel weight ranges differ {spread:.0f}x, so one per-layer scale "
                                 f"leaves small channels a few int8 levels")
        sev = "warning" if notes else "info"
        yield Finding(sev, "depthwise-int8", layer.name, layer.op_type,
                      "depthwise conv under 8-bit quantization loses accuracy" + (": " + "; ".join(notes)
                                                                                   if notes else ""),
                      "prefer regular convs; else use ReLU (not SiLU), no BN/activation after the depthwise conv, "
                      "L2 regularisation on its weights in training, and per-channel quantization")


def _per_channel(ctx: Context, layer: Layer) -> bool:
    """Whether this conv's weights get one scale per output channel (a QDQ graph says; else the scheme's default)."""
    w = ctx.gi.weights.get(layer.weights[0]) if layer.weights else None
    if ctx.gi.quantized and w is not None:
        return w.quant_params > 2
    return get_scheme(ctx.quant_dtype).per_channel


@rule("reduce-8bit")
def _reduce_8bit(ctx: Context) -> Iterator[Finding]:
    if ctx.gen.name != "rknpu1" or not _is_8bit(ctx):
        return
    for layer in _compute_layers(ctx, "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"):
        yield Finding("info", "reduce-8bit", layer.name, layer.op_type,
                      f"{layer.op_type} loses accuracy in u8/i8 on RKNPU1",
                      "keep it in 16-bit (hybrid quantization) or move it to post-processing")


@rule("mixed-range-output")
def _mixed_range_output(ctx: Context) -> Iterator[Finding]:
    """A Concat feeding an output that joins 0..1 scores (sigmoid) with unbounded values: one int8 scale for both
    erases the scores (FACTS.md: the known cause of 'all scores zero' after quantization). A quantized graph whose
    concat is float already keeps one scale per part (openrknn's builds: the plan's float tail)."""
    gi = ctx.gi
    outputs = set(gi.outputs)
    for layer in _compute_layers(ctx, "Concat"):
        if not _reaches_output(layer, gi, outputs):
            continue
        if gi.quantized and all(gi.tensors[t].dtype.startswith("float") for t in layer.outputs if t in gi.tensors):
            continue
        kinds = {_source_kind(t, gi) for t in layer.inputs}
        if "bounded" in kinds and "unbounded" in kinds:
            yield Finding("warning", "mixed-range-output", layer.name, layer.op_type,
                          "concatenates sigmoid scores (0..1) with unbounded values (boxes/logits) into one output: "
                          "under one 8-bit scale the scores lose almost all their levels",
                          "export boxes and scores as separate outputs (or keep this tensor in 16-bit)")


def _source_kind(t: str, gi: GraphInfo, depth: int = 0) -> str:
    prod = gi.producer(t)
    if prod is None or depth > 6:
        return "unbounded"
    if prod.op_type in ("Sigmoid", "Softmax", "HardSigmoid"):
        return "bounded"
    if prod.op_type in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat") and prod.inputs:
        kinds = {_source_kind(i, gi, depth + 1) for i in prod.inputs}
        return "bounded" if kinds == {"bounded"} else "unbounded" if "bounded" not in kinds else "mixed"
    return "unbounded"


def _reaches_output(layer: Layer, gi: GraphInfo, outputs: set, depth: int = 0) -> bool:
    for t in layer.outputs:
        if t in outputs:
            return True
        if depth < 4 and any(c.op_type in ("Reshape", "Transpose", "Concat", "Flatten") and
                             _reaches_output(c, gi, outputs, depth + 1) for c in gi.consumers(t)):
            return True
    return False


@rule("calibration-size")
def _calibration_size(ctx: Context) -> Iterator[Finding]:
    if ctx.calib_count is None or ctx.calib_count >= MIN_CALIBRATION_IMAGES:
        return
    yield Finding("warning", "calibration-size", "", "",
                  f"the calibration set has {ctx.calib_count} images; fewer than {MIN_CALIBRATION_IMAGES} rarely "
                  f"cover the activation ranges the model sees",
                  "list 100-500 representative images from the training or validation set in dataset.txt")


@rule("preprocess-scale")
def _preprocess_scale(ctx: Context) -> Iterator[Finding]:
    """mean/std given on the 0..1 scale (0.485, 0.229) while the model's input is raw 0..255 pixels."""
    means, stds = ctx.mean_values or [], ctx.std_values or []
    for i in range(max(len(means), len(stds))):
        mean = [float(v) for v in (means[i] if i < len(means) else [])]
        std = [float(v) for v in (stds[i] if i < len(stds) else [])]
        small_mean = bool(mean) and all(0 < abs(v) < 1 for v in mean)
        small_std = bool(std) and all(0 < v < 1 for v in std)
        if small_mean or small_std:
            yield Finding("warning", "preprocess-scale", "", "",
                          f"input {i}: mean_values {mean or '-'} / std_values {std or '-'} look like 0..1-scale "
                          f"values, but they apply to raw 0..255 pixels",
                          "multiply them by 255 (ImageNet: mean 123.675 116.28 103.53, std 58.395 57.12 57.375)")


@rule("first-layer-cosine")
def _first_layer_cosine(ctx: Context) -> Iterator[Finding]:
    c = ctx.first_layer_cosine
    if c is None or c >= FIRST_LAYER_COSINE:
        return
    first = next(_compute_layers(ctx, "Conv"), None)
    yield Finding("error", "first-layer-cosine", first.name if first else "", first.op_type if first else "",
                  f"the first layer's quantized output has cosine {c:.4f} to float (< {FIRST_LAYER_COSINE}): the "
                  f"input itself is off, which is almost always a pre-processing mismatch",
                  "check mean_values/std_values (0..255 scale, model channel order), reorder_channel ('2 1 0' for "
                  "BGR feeds of an RGB model) and quant_img_RGB2BGR against how the model was trained")


# ---------------------------------------------------------------------------------------------------------------------
def check_model(model: onnx.ModelProto, target: str, quant_dtype: Optional[str] = None,
                calib_count: Optional[int] = None, first_layer_cosine: Optional[float] = None,
                rules: Optional[Iterable[str]] = None, mean_values: Optional[list] = None,
                std_values: Optional[list] = None, names: Optional[LayerNames] = None) -> list[Finding]:
    """Run the checker's rules (all, or the named ones) and return findings, errors first, one per user layer.

    calib_count: images in dataset.txt; first_layer_cosine: from accuracy_analysis; mean/std_values: the config's,
    one list per input. Facts left None skip the rules that need them. names: the user's layer names of a built
    model (analysis.layer_names.package_layer_names); by default the model's own, the quantizer's records read.
    """
    spec = chip(target)
    gi = analyze(model, quant_dtype)
    names = names if names is not None else layer_names(model)
    ctx = Context(model, gi, spec, quant_dtype, calib_count, first_layer_cosine, fuse(gi, spec.gen), mean_values,
                  std_values, names)
    wanted = list(RULES) if rules is None else list(rules)
    unknown = [r for r in wanted if r not in RULES]
    if unknown:
        from ..errors import ConfigError
        raise ConfigError("rules", unknown, sorted(RULES))
    out = fold_findings([f for name in wanted for f in RULES[name](ctx)], names)
    return sorted(out, key=lambda f: SEVERITIES.index(f.severity))


def fold_findings(findings: Iterable[Finding], names: LayerNames) -> list[Finding]:
    """One finding per rule and user layer: a layer the quantizer cut into parts gets one finding (the most severe
    part's) that lists the layer's parts in the built model; model-wide findings stay as they are."""
    out: dict[tuple, Finding] = {}
    for f in findings:
        user = names.of(f.layer) if f.layer else ""
        key = (f.rule, user) if user else (f.rule, f.why, len(out))
        prev = out.get(key)
        if prev is None or SEVERITIES.index(f.severity) < SEVERITIES.index(prev.severity):
            parts = list(names.parts.get(user, [f.layer])) if user and names.folded(user) else []
            out[key] = replace(f, layer=user, op_type=names.op_types.get(user, f.op_type) if user else f.op_type,
                               parts=parts)
    return list(out.values())


def findings_summary(findings: Iterable[Finding]) -> str:
    """'0 errors, 3 warnings, 1 note' (what the table and the report print under the findings; info = note)."""
    findings = list(findings)
    words = {"error": "error", "warning": "warning", "info": "note"}
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    return ", ".join(f"{n} {words[s]}{'s' if n != 1 else ''}" for s, n in counts.items())


def findings_json(findings: Iterable[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def findings_table(findings: Iterable[Finding], width: int = 120) -> str:
    findings = list(findings)
    if not findings:
        return "No findings: nothing in this model goes against the NPU design rules checked."
    lines = [f"{'severity':<8} {'rule':<18} {'layer':<28} why / what to do", "-" * width]
    for f in findings:
        layer = f"{f.layer} ({f.op_type})" if f.layer else "(model)"
        lines.append(f"{f.severity:<8} {f.rule:<18} {layer[:28]:<28} {f.why}")
        lines.append(f"{'':<8} {'':<18} {'':<28} -> {f.what_to_do}")
    lines.append("-" * width)
    lines.append(findings_summary(findings))
    return "\n".join(lines)
