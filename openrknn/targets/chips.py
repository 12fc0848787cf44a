"""Per-chip hardware tables and per-generation op support, read by the checker, the quantizer and the cost model.

Sources: ../shared/FACTS.md ("NPU hardware", "Operator limits") and the seed's NPU design advice. Anything without a
primary source is marked MODELLED in a comment: those numbers are this project's assumptions, chosen to be plausible
and to make the cost model reproduce the published rknn_model_zoo speeds (bench/perf_estimate.py prints how well).
Adding a chip = adding one `ChipSpec` to `CHIPS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..errors import ConfigError
from . import NPU_GENERATION


# ---------------------------------------------------------------------------------------------------------------------
# op support per NPU generation
# Ops that never cost anything on the board: views of the same buffer or compile-time constants.
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
CONST_OPS = frozenset({"Constant", "Shape", "ConstantOfShape", "Size", "Range"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

# FACTS.md: not supported on the NPU (RKNPU2 list); RKNPU1 lacks them too. They run on the board's CPU.
NEVER_ON_NPU = frozenset({"TopK", "NonMaxSuppression", "GridSample", "DeformConv", "Einsum", "GatherND", "CumSum"})

_COMMON_NPU_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Add", "Sub", "Mul", "Div", "Concat", "Split", "Slice", "Transpose", "Resize", "Upsample", "Pad",
    "Softmax", "LRN", "DepthToSpace", "SpaceToDepth", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
})
# MODELLED: the vendor's op lists are authoritative; these sets follow its documented categories.
_RKNPU2_EXTRA_NPU_OPS = frozenset({
    "HardSwish", "HardSigmoid", "Elu", "Exp", "InstanceNormalization", "LayerNormalization", "Gather", "Where",
    "Max", "Min", "Abs", "Neg", "Sqrt", "Reciprocal", "Pow", "Erf", "Gelu", "Mish", "Softplus", "Cast", "Expand",
    "Tile", "ArgMax", "ArgMin", "Swish",
    # rknn-toolkit2 compiles an LSTM into one NPU op (exLSTM, seen in its build of a CRNN recognizer); a board's
    # profile lists LSTM under NPU time with no CPU time (airockchip/rknn-toolkit2#402)
    "LSTM",
})
_CPU_FALLBACK_OPS = NEVER_ON_NPU | frozenset({
    "HardSwish", "HardSigmoid", "Elu", "Exp", "Log", "InstanceNormalization", "LayerNormalization", "Gather",
    "Where", "Max", "Min", "Abs", "Neg", "Sqrt", "Reciprocal", "Pow", "Erf", "Gelu", "Mish", "Softplus", "Cast",
    "Expand", "Tile", "ArgMax", "ArgMin", "ScatterND", "ScatterElements", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And",
    "Or", "Floor", "Ceil", "Round", "Sin", "Cos", "NonZero", "OneHot", "ReduceProd", "ReduceL2", "LpNormalization",
    "GatherElements", "Mod", "Sign", "Swish", "Trilu",
})
# rknpu2 1.5.0's release notes name GRU among its CPU operators (RKNPU1: not known)
_RKNPU2_EXTRA_CPU_OPS = frozenset({"GRU"})


@dataclass(frozen=True)
class ConvLimits:
    kernel_min: int
    kernel_max: int | None           # absolute limit (RKNPU2); None = depends on stride
    kernel_max_per_stride: int | None  # RKNPU1: kernel <= k * stride - 1
    stride_max: int | None
    pad_max: int | None
    dilation_max: int | None
    depthwise_kernel_max: int | None


@dataclass(frozen=True)
class CostModel:
    """Global cost-model parameters of one NPU generation (MODELLED, fitted once; see bench/perf_estimate.py).

    util_*: fraction of the MAC array a conv keeps busy, by kernel family; 3x3 is the array's best case.
    lane_in/lane_out: channel blocks the array computes at once; a conv with 20 channels pays for 32.
    lane_depthwise: channels a depthwise conv processes at once; a 1-channel part of a split tensor pays for all.
    layer_overhead_us: fixed cost per NPU task (descriptor fetch, sync); why tiny layers are not free.
    ddr_efficiency: share of the board's peak DDR bandwidth the NPU sees.
    cpu_gbps / cpu_op_us: the board CPU's speed on fallback ops and the NPU<->CPU hand-over per op.

    How they were set: these are a generation's defaults (first fitted to RK1808 and one RK3588 core); every chip
    with published speeds gets its own copy with the conv and depthwise utilisation scaled and its own per-layer
    overhead and DDR efficiency (`_fitted`, `python bench/perf_estimate.py --fit`); lane sizes and the rest are
    round guesses. lane_depthwise=64 on RKNPU2: rknn-toolkit2's per-layer cycle table gives a 1- to 32-channel
    depthwise conv the same cycles. Chips without published speeds (rv1103/rv1106) use their generation's defaults.
    """

    util_3x3: float
    util_1x1: float
    util_other: float
    util_depthwise: float
    util_gemm: float
    lane_in: int
    lane_out: int
    lane_depthwise: int
    layer_overhead_us: float
    ddr_efficiency: float
    elementwise_bytes_per_cycle: float
    cpu_gbps: float
    cpu_op_us: float


@dataclass(frozen=True)
class Generation:
    name: str
    npu_ops: frozenset[str]
    cpu_ops: frozenset[str]
    conv: ConvLimits
    # activations the NPU applies in the conv's output stage (no extra pass over memory)
    fused_activations: frozenset[str]
    activation_hosts: frozenset[str]  # ops whose output stage can apply a following activation
    fuses_residual_add: bool
    fuses_max_pool: bool  # RKNPU1 only, under the seed's size rules (see lint.maxpool_fusion_problems)
    # x * k / x + b with a one-element constant k, b after a layer: applied in that layer's output stage (a
    # different output scale / zero point) instead of a pass of its own
    fuses_scalar_affine: bool
    # the conv outputs it requantizes before their activation instead of applying the activation in full precision
    # (quant/plan.py: a depthwise conv before its SiLU)
    requantizes_pre_activations: bool
    cost: CostModel


GENERATIONS: dict[str, Generation] = {
    "rknpu1": Generation(
        name="rknpu1",
        npu_ops=_COMMON_NPU_OPS,
        cpu_ops=_CPU_FALLBACK_OPS,
        # seed: "smallest kernel 1, largest 11 * stride - 1" (FACTS.md writes the range as 1..11*stride)
        conv=ConvLimits(kernel_min=1, kernel_max=None, kernel_max_per_stride=11, stride_max=None, pad_max=None,
                        dilation_max=None, depthwise_kernel_max=None),
        # FACTS.md / seed: conv + ReLU (and max-pool) fuse; ReLU6 (Clip 0..6) is ReLU with a clamp (MODELLED)
        fused_activations=frozenset({"Relu", "Clip"}),
        # a standalone BN runs as a per-channel 1x1 conv, so it fuses like one (MODELLED)
        activation_hosts=frozenset({"Conv", "ConvTranspose", "Gemm", "BatchNormalization"}),
        fuses_residual_add=False,
        fuses_max_pool=True,
        fuses_scalar_affine=True,  # MODELLED: not measured (rknn-toolkit 1.x is not on PyPI)
        requantizes_pre_activations=False,  # not measured: rknn-toolkit 1.x is not on PyPI
        # MODELLED, fitted to the RK1808 column of the published table (bench/perf_estimate.py)
        cost=CostModel(util_3x3=0.60, util_1x1=0.45, util_other=0.40, util_depthwise=0.02, util_gemm=0.10,
                       lane_in=32, lane_out=16, lane_depthwise=32, layer_overhead_us=30.0, ddr_efficiency=0.6,
                       elementwise_bytes_per_cycle=16.0, cpu_gbps=2.0, cpu_op_us=200.0),
    ),
    "rknpu2": Generation(
        name="rknpu2",
        npu_ops=_COMMON_NPU_OPS | _RKNPU2_EXTRA_NPU_OPS,
        cpu_ops=(_CPU_FALLBACK_OPS - _RKNPU2_EXTRA_NPU_OPS) | _RKNPU2_EXTRA_CPU_OPS,
        conv=ConvLimits(kernel_min=1, kernel_max=31, kernel_max_per_stride=None, stride_max=7, pad_max=15,
                        dilation_max=31, depthwise_kernel_max=8),
        # FACTS.md: conv fuses Relu/Clip/PRelu/LeakyRelu/Add/Sigmoid/HardSwish/...; MEASURED: rknn-toolkit2 2.5.0
        # compiles an Abs after a conv as a LeakyRelu of slope -1 fused into it (its quantization config)
        fused_activations=frozenset({"Relu", "Clip", "PRelu", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid",
                                     "Tanh", "Abs"}),
        # MODELLED: the elementwise unit applies activations to its output like the conv does
        activation_hosts=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub",
                                    "Mul"}),
        fuses_residual_add=True,
        fuses_max_pool=False,
        # MEASURED: rknn-toolkit2 2.5.0 compiles PP-OCRv4 det's scalar x * k and x + b after its activations as
        # layers of their own (24 Mul, in float16, and 37 Add in its int8 build), as it does range split's remaps
        fuses_scalar_affine=False,
        # MEASURED: rknn-toolkit2 2.5.0's compiled layers and quantization cfg (docs/vendor.md)
        requantizes_pre_activations=True,
        # MODELLED, fitted to the RK3588 column of the published table (bench/perf_estimate.py)
        cost=CostModel(util_3x3=0.70, util_1x1=0.60, util_other=0.55, util_depthwise=0.03, util_gemm=0.15,
                       lane_in=32, lane_out=16, lane_depthwise=64, layer_overhead_us=10.0, ddr_efficiency=0.7,
                       elementwise_bytes_per_cycle=32.0, cpu_gbps=4.0, cpu_op_us=100.0),
    ),
}


# ---------------------------------------------------------------------------------------------------------------------
# chips
@dataclass(frozen=True)
class ChipSpec:
    name: str
    generation: str
    tops_int8: float                 # published peak, all cores (FACTS.md)
    cores: int
    npu_clock_mhz: float             # MODELLED unless noted: chosen so MACs x 2 x clock matches the published TOPS
    macs_per_cycle: Mapping[str, int]  # per core, by MAC mode (see mac_class)
    onchip_buffer_kb: int            # per core NPU buffer
    soc_sram_kb: int
    ddr_peak_gbps: float             # MODELLED: board DDR bus width x rate; no primary source (FACTS.md)
    typical_dram_mb: int             # typical board, for "does it fit" comparisons only
    dtypes: tuple[str, ...]          # config(quantized_dtype=...) values this chip accepts
    notes: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    cost_override: CostModel | None = None  # this chip's fitted cost parameters (None: its generation's)

    @property
    def gen(self) -> Generation:
        return GENERATIONS[self.generation]

    @property
    def cost(self) -> CostModel:
        return self.cost_override or self.gen.cost

    def macs_per_second(self, mac: str, cores: int = 1) -> float:
        if mac not in self.macs_per_cycle:
            raise ConfigError("quantized_dtype", mac, sorted(self.macs_per_cycle),
                              hint=f"{self.name} has no {mac} MAC mode")
        return self.macs_per_cycle[mac] * self.npu_clock_mhz * 1e6 * min(cores, self.cores)

    @property
    def ddr_bytes_per_second(self) -> float:
        return self.ddr_peak_gbps * 1e9 * self.cost.ddr_efficiency


def _fitted(gen: str, util_scale: float, depthwise_scale: float, layer_overhead_us: float,
            ddr_efficiency: float) -> CostModel:
    """One chip's cost parameters: its generation's, with the conv utilisation (all kernel families) and the
    depthwise utilisation scaled, and its own per-layer overhead and DDR efficiency. MODELLED: a grid search of round
    values minimising the worst |log(estimate / published FPS)| over the chip's published points, held-out points
    left out (`python bench/perf_estimate.py --fit`; the fit and the held-out error are in bench/RESULTS.md)."""
    base = GENERATIONS[gen].cost
    return replace(base, util_3x3=base.util_3x3 * util_scale, util_1x1=base.util_1x1 * util_scale,
                   util_other=base.util_other * util_scale, util_gemm=base.util_gemm * util_scale,
                   util_depthwise=base.util_depthwise * depthwise_scale, layer_overhead_us=layer_overhead_us,
                   ddr_efficiency=ddr_efficiency)


_FIT = {
    "rk1808": _fitted("rknpu1", util_scale=1.2, depthwise_scale=0.7, layer_overhead_us=30.0, ddr_efficiency=0.6),
    "rv1109": _fitted("rknpu1", util_scale=0.5, depthwise_scale=2.0, layer_overhead_us=7.0, ddr_efficiency=0.6),
    "rv1126": _fitted("rknpu1", util_scale=0.4, depthwise_scale=2.0, layer_overhead_us=1.0, ddr_efficiency=0.95),
    "rk3566": _fitted("rknpu2", util_scale=0.9, depthwise_scale=1.4, layer_overhead_us=40.0, ddr_efficiency=0.6),
    "rk3562": _fitted("rknpu2", util_scale=0.9, depthwise_scale=3.0, layer_overhead_us=20.0, ddr_efficiency=0.8),
    "rk3588": _fitted("rknpu2", util_scale=0.9, depthwise_scale=1.0, layer_overhead_us=7.0, ddr_efficiency=0.8),
    "rk3576": _fitted("rknpu2", util_scale=0.7, depthwise_scale=0.7, layer_overhead_us=3.0, ddr_efficiency=0.6),
}


_V1_DTYPES = ("asymmetric_quantized-u8", "dynamic_fixed_point-i8", "dynamic_fixed_point-i16")
_V2_DTYPES = ("w8a8", "w8a16", "w16a16i", "float16")


def _v1_macs(int8: int) -> dict[str, int]:
    # FACTS.md, RK1808: 1920 int8, 192 int16, 64 fp16 MACs/cycle; other RKNPU1 chips keep the same ratios (MODELLED)
    return {"int8": int8, "int16": int8 // 10, "float16": int8 // 30}


def _v2_macs(int8: int, int4: bool = False) -> dict[str, int]:
    # MODELLED: RKNPU2 runs int16/fp16/bf16 at half the int8 rate and int4 at twice (where it has int4)
    macs = {"int8": int8, "int16": int8 // 2, "float16": int8 // 2, "bfloat16": int8 // 2}
    if int4:
        macs["int4"] = int8 * 2
    return macs


CHIPS: dict[str, ChipSpec] = {c.name: c for c in (
    # RKNPU1 -----------------------------------------------------------------------------------------------------
    ChipSpec("rk1808", "rknpu1", 3.0, 1, 800, _v1_macs(1920), onchip_buffer_kb=512, soc_sram_kb=2048,
             ddr_peak_gbps=6.4, typical_dram_mb=1024, dtypes=_V1_DTYPES,
             cost_override=_FIT["rk1808"], notes="1920 int8 MAC/cycle (FACTS.md); 32-bit LPDDR3-1600 assumed"),
    ChipSpec("rk1806", "rknpu1", 3.0, 1, 800, _v1_macs(1920), onchip_buffer_kb=512, soc_sram_kb=2048,
             ddr_peak_gbps=6.4, typical_dram_mb=512, dtypes=_V1_DTYPES,
             cost_override=_FIT["rk1808"], notes="as RK1808 (FACTS.md)"),
    ChipSpec("rk3399pro", "rknpu1", 3.0, 1, 800, _v1_macs(1920), onchip_buffer_kb=512, soc_sram_kb=2048,
             ddr_peak_gbps=6.4, typical_dram_mb=2048, dtypes=_V1_DTYPES,
             cost_override=_FIT["rk1808"], notes="NPU as RK1808 (FACTS.md)"),
    ChipSpec("rv1109", "rknpu1", 1.2, 1, 800, _v1_macs(768), onchip_buffer_kb=256, soc_sram_kb=0,
             ddr_peak_gbps=6.4, typical_dram_mb=1024, dtypes=_V1_DTYPES,
             cost_override=_FIT["rv1109"], notes="1.2 TOPS int8 (FACTS.md)"),
    ChipSpec("rv1126", "rknpu1", 2.0, 1, 800, _v1_macs(1280), onchip_buffer_kb=256, soc_sram_kb=0,
             ddr_peak_gbps=6.4, typical_dram_mb=2048, dtypes=_V1_DTYPES,
             cost_override=_FIT["rv1126"], notes="2.0 TOPS int8 (FACTS.md)"),
    # RKNPU2 -----------------------------------------------------------------------------------------------------
    ChipSpec("rk3562", "rknpu2", 1.0, 1, 1000, _v2_macs(512), onchip_buffer_kb=256, soc_sram_kb=0,
             ddr_peak_gbps=8.5, typical_dram_mb=2048, dtypes=_V2_DTYPES,
             cost_override=_FIT["rk3562"], notes="~1 TOPS (unverified, FACTS.md); w8a16"),
    ChipSpec("rk3566", "rknpu2", 0.8, 1, 800, _v2_macs(512), onchip_buffer_kb=256, soc_sram_kb=0,
             ddr_peak_gbps=12.8, typical_dram_mb=4096, dtypes=_V2_DTYPES,
             cost_override=_FIT["rk3566"], notes="0.8-1.0 TOPS (FACTS.md)"),
    ChipSpec("rk3568", "rknpu2", 1.0, 1, 1000, _v2_macs(512), onchip_buffer_kb=256, soc_sram_kb=0,
             ddr_peak_gbps=12.8, typical_dram_mb=4096, dtypes=_V2_DTYPES,
             cost_override=_FIT["rk3566"], notes="0.8-1.0 TOPS (FACTS.md)"),
    ChipSpec("rk3576", "rknpu2", 6.0, 2, 1000, _v2_macs(1536, int4=True), onchip_buffer_kb=512, soc_sram_kb=512,
             ddr_peak_gbps=17.0, typical_dram_mb=4096, dtypes=_V2_DTYPES + ("w4a16",),
             cost_override=_FIT["rk3576"], notes="6 TOPS on 2 cores, w4a16 (FACTS.md)"),
    ChipSpec("rk3588", "rknpu2", 6.0, 3, 1000, _v2_macs(1024, int4=True), onchip_buffer_kb=384, soc_sram_kb=956,
             ddr_peak_gbps=17.0, typical_dram_mb=8192, dtypes=_V2_DTYPES,
             cost_override=_FIT["rk3588"],
             notes="6 TOPS = 3 cores x 2; 384 KB buffer per core; up to 956 KB SoC SRAM (FACTS.md); "
                   "DDR: one core's share of LPDDR4x assumed"),
    ChipSpec("rv1103", "rknpu2", 0.5, 1, 1000, _v2_macs(256), onchip_buffer_kb=128, soc_sram_kb=0,
             ddr_peak_gbps=2.6, typical_dram_mb=64, dtypes=("w8a8", "w16a16i"),
             notes="0.5 TOPS int8/int16 (FACTS.md); 64 MB in-package DDR2"),
    ChipSpec("rv1106", "rknpu2", 0.5, 1, 1000, _v2_macs(256), onchip_buffer_kb=128, soc_sram_kb=0,
             ddr_peak_gbps=3.2, typical_dram_mb=256, dtypes=("w8a8", "w16a16i"),
             notes="0.5 TOPS int8/int16 (FACTS.md); 128-256 MB in-package DDR3"),
)}

assert set(CHIPS) == set(NPU_GENERATION), "every platform name needs a chip table"


def chip(name: str) -> ChipSpec:
    """The table of one chip; a clear error naming the known chips otherwise."""
    key = str(name).lower()
    if key not in CHIPS:
        raise ConfigError("target_platform", name, sorted(CHIPS))
    return CHIPS[key]


def placement(op_type: str, generation: str) -> str:
    """'npu', 'cpu' (runs, on the board's CPU), 'free' (view/constant/fused Q-DQ) or 'unsupported'."""
    gen = GENERATIONS[generation]
    if op_type in VIEW_OPS or op_type in CONST_OPS or op_type in QDQ_OPS:
        return "free"
    if op_type in gen.npu_ops and op_type not in NEVER_ON_NPU:
        return "npu"
    if op_type in gen.cpu_ops:
        return "cpu"
    return "unsupported"


def requantizes_pre_activations(target: str | None, dtype: str) -> bool:
    """Whether the chip (the target's generation, else the one the dtype belongs to) stores some conv outputs as
    integers before their activation (Generation.requantizes_pre_activations)."""
    from . import QUANTIZED_DTYPES

    gen = NPU_GENERATION.get(str(target or "").lower()) or (
        "rknpu2" if dtype in QUANTIZED_DTYPES["rknpu2"] else "rknpu1")
    return GENERATIONS[gen].requantizes_pre_activations
