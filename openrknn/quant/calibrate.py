"""Streaming calibration statistics: one float pass per statistic, memory bounded by the model, not the dataset.

Pass 1 (every algorithm) adds ReduceMin / ReduceMax (and per-channel ReduceMean for bias correction) nodes to a copy
of the float model, so onnxruntime computes the statistics where the tensors live and only scalars come back.
Pass 2 (kl_divergence, mmse) fetches the quantization-point tensors and folds a fixed-stride sample of each (at most
``samples_per_tensor`` values per image) into a fixed-range histogram whose range pass 1 found. Nothing is stored
per image, so peak memory is one image's activations plus ``bins`` counts per tensor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

log = logging.getLogger("openrknn.quant.calibrate")


@dataclass
class Stats:
    """What calibration learned about the float model's tensors."""

    minmax: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    channel_mean: Dict[str, np.ndarray] = field(default_factory=dict)
    channel_minmax: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    channel_samples: Dict[str, np.ndarray] = field(default_factory=dict)  # [C, positions] values of a few images
    # per channel of channel_minmax's tensors: the median over samples (the first STEADINESS_SAMPLES) of the channel's
    # span in one sample, over its span in all of them (spans include 0). Near 1: the channel reaches its
    # range in a typical sample; near 0: it fires in a few samples only, and its calibrated range says little about
    # the next one. Scale-free, so the rewrites that rescale channel_minmax leave it valid.
    channel_steadiness: Dict[str, np.ndarray] = field(default_factory=dict)
    pooled: List[List[str]] = field(default_factory=list)  # tensors over one range whose histograms add up
    hist: Dict[str, np.ndarray] = field(default_factory=dict)      # counts over minmax range, ``bins`` bins
    samples: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)
    # the first points of image inputs: every value they take over the pixels 0..255, [lines, 256]
    # (pixel_ranges.py); minmax holds their extent too, and no clipping algorithm narrows it
    pixel_values: Dict[str, np.ndarray] = field(default_factory=dict)
    pixel_grids: Dict[tuple, Tuple[float, float]] = field(default_factory=dict)  # grid_range's answers


_IDLE_CACHE: List[float] = []  # [time measured, idle cores]
STEADINESS_SAMPLES = 64  # per-sample spans kept for Stats.channel_steadiness: a median needs no more, memory stays flat


def _idle_cores_now(cores: int) -> Optional[float]:
    """Cores not used by other processes over the next 50 ms, from /proc/stat and /proc/self/stat (Linux), or None.
    Unlike the load average, this does not count our own work (a calibration pass a moment ago, onnxruntime threads
    of ours still spinning after their last run)."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # after the command name: state, ppid, ... utime, stime
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0), int(own[11]) + int(own[12])

    try:
        t0, i0, o0 = sample()
        time.sleep(0.05)
        t1, i1, o1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return min(cores, cores * (i1 - i0 + o1 - o0) / (t1 - t0)) if t1 > t0 else None


def auto_threads() -> int:
    """Idle cores: on a machine that is already busy, extra intra-op threads only contend and make a calibration
    pass slower than one thread would; on idle cores they make it faster."""
    import os

    cores = os.cpu_count() or 1
    now = time.monotonic()
    if _IDLE_CACHE and now - _IDLE_CACHE[0] < 2.0:
        idle = _IDLE_CACHE[1]
    else:
        idle = _idle_cores_now(cores)
        if idle is None:
            try:
                idle = cores - os.getloadavg()[0]
            except (AttributeError, OSError):
                idle = cores
        _IDLE_CACHE[:] = [now, idle]
    return max(1, min(cores, int(round(idle))))


def make_session(model: onnx.ModelProto, threads: int = 0):
    """CPU session for calibration passes; ``threads`` 0 = $OPENRKNN_THREADS when set (e.g. one per sweep worker),
    else the idle cores (auto_threads)."""
    import os

    from ..runtime.ort_session import make_session as new_session

    return new_session(model, threads or int(os.environ.get("OPENRKNN_THREADS", "0") or 0) or auto_threads())


def run_ahead(data: Iterable, run: Callable[[int, object], object]) -> Iterator[Tuple[object, object]]:
    """(sample, run(i, sample)) for each sample of ``data``, with the next sample loaded and run on a worker thread
    while the caller works on this one: onnxruntime and numpy release the GIL, so a pass whose statistics are numpy
    work between runs takes about the longer of the two instead of their sum. Same order, same results."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(data)
    end = object()

    def step(i: int):
        sample = next(it, end)
        return sample, (None if sample is end else run(i, sample))

    with ThreadPoolExecutor(1, thread_name_prefix="openrknn-run-ahead") as pool:
        pending = pool.submit(step, 0)
        i = 0
        while True:
            sample, out = pending.result()
            if sample is end:
                return
            i += 1
            pending = pool.submit(step, i)
            yield sample, out


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def reduce_node(op: str, src: str, dst: str, axes: Optional[Sequence[int]], opset: int, extra: List) -> onnx.NodeProto:
    if axes is None:
        return helper.make_node(op, [src], [dst], keepdims=0)
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        name = dst + "__axes"
        extra.append(onnx.numpy_helper.from_array(np.asarray(axes, np.int64), name))
        return helper.make_node(op, [src, name], [dst], keepdims=0)
    return helper.make_node(op, [src], [dst], keepdims=0, axes=list(axes))


CHANNELS = "channels"  # reduction axes: every axis but 1, whatever the tensor's rank (a Conv1D's [N, C, L] too)


def augment(model: onnx.ModelProto, outputs: Dict[str, Tuple[str, str, Optional[Sequence[int]]]],
             fetch: Iterable[str] = ()) -> onnx.ModelProto:
    """Copy of model with extra outputs: {new output: (op, source tensor, axes)} reductions (axes CHANNELS: per
    channel of axis 1), plus raw tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    opset = opset_of(m)
    extra: List = []
    existing = {o.name for o in g.output}
    reshaped: set = set()  # one Reshape per tensor, for its min and its max
    for dst, (op, src, axes) in outputs.items():
        if axes == CHANNELS:  # [N, C, ...] -> [N, C, rest], reduced over 0 and 2
            rows = src + "__channel_rows"
            if rows not in reshaped:
                reshaped.add(rows)
                shape = rows + "__shape"
                extra.append(onnx.numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape))
                g.node.append(helper.make_node("Reshape", [src, shape], [rows]))
            src, axes = rows, (0, 2)
        g.node.append(reduce_node(op, src, dst, axes, opset, extra))
        g.output.append(helper.make_tensor_value_info(dst, onnx.TensorProto.FLOAT, None))
    for name in fetch:
        if name not in existing:
            g.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    g.initializer.extend(extra)
    return m


def _bar(total: int, desc: str, progress: bool):
    from ..progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="img", enabled=progress, leave=False)


SOFTMAX_SPAN = 40.0  # e^-40: the weight, against its row's largest, of a value this far below it


def softmax_floor(lo: float, row_max_low: float) -> float:
    """The lowest value a Softmax's input range needs: SOFTMAX_SPAN below the smallest row maximum seen. Softmax is
    the same for a row shifted by a constant, so what it reads is each value's distance below its row's maximum; a
    value further down than SOFTMAX_SPAN weighs under e^-40 of that maximum, and clamping it to the floor keeps it so
    (every row's maximum is at or above the smallest). A classifier whose logits fall far below its winners on the
    samples that are clearly not a class otherwise rounds its close decisions in coarse steps. The span leaves room
    for a held-out row whose maximum falls below every calibration row's; a narrower one cost a transformer's
    attention accuracy (bench/RESULTS.md)."""
    return max(lo, row_max_low - SOFTMAX_SPAN) if np.isfinite(row_max_low) else lo


def collect_minmax(model: onnx.ModelProto, tensors: Sequence[str], data, mean_inputs: Dict[str, Sequence[int]],
                   stats: Stats, progress: bool = True, threads: int = 0,
                   known_min: Optional[Dict[str, float]] = None, channel_tensors: Sequence[str] = (),
                   sample_tensors: Sequence[str] = (), sample_images: int = 4, sample_positions: int = 4096,
                   softmax_axes: Optional[Dict[str, Tuple[int, ...]]] = None) -> None:
    """Pass 1: global min/max of every tensor, per-channel means of ``mean_inputs`` {tensor: reduce axes} and
    per-channel (axis 1) min/max of the ``channel_tensors`` (range split candidates, heads; any rank); the values
    of the NCHW ``sample_tensors`` at up to ``sample_positions`` strided positions of each of the first
    ``sample_images`` samples (range split measures rounding noise on them).
    ``known_min`` {tensor: bound}: activations whose minimum is known in closed form (ReLU 0, SiLU -0.2785) are
    not reduced for it; the bound is used instead (one reduction less per such tensor).
    ``softmax_axes`` {tensor: axes}: tensors read only by a Softmax over those axes; their range starts SOFTMAX_SPAN
    below the smallest maximum over the axes seen (softmax_floor)."""
    t0 = time.perf_counter()
    known_min = known_min or {}
    softmax_axes = softmax_axes or {}
    outs: Dict[str, Tuple[str, str, Optional[Sequence[int]]]] = {}
    for t, axes in softmax_axes.items():
        outs[t + "__rowmax"] = ("ReduceMax", t, tuple(axes))
    for t in tensors:
        if t not in known_min and t not in channel_tensors:
            outs[t + "__qmin"] = ("ReduceMin", t, None)
        if t not in channel_tensors:
            outs[t + "__qmax"] = ("ReduceMax", t, None)
    for t, axes in mean_inputs.items():
        outs[t + "__qmean"] = ("ReduceMean", t, axes)
    for t in channel_tensors:
        outs[t + "__cmin"] = ("ReduceMin", t, CHANNELS)
        outs[t + "__cmax"] = ("ReduceMax", t, CHANNELS)
    sess = make_session(augment(model, outs, sample_tensors), threads)
    cmin: Dict[str, np.ndarray] = {}
    cmax: Dict[str, np.ndarray] = {}
    names = list(outs)
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    row_max_low = {t: np.inf for t in softmax_axes}
    sums: Dict[str, np.ndarray] = {}
    n = 0
    samples: Dict[str, List[np.ndarray]] = {t: [] for t in sample_tensors}
    spans: Dict[str, List[np.ndarray]] = {t: [] for t in channel_tensors}  # each sample's per-channel span
    with _bar(len(data), "calibrate min/max", progress) as bar:
        for feed in data:
            fetch = names + (list(sample_tensors) if n < sample_images else [])
            res = dict(zip(fetch, sess.run(fetch, feed)))
            for t in sample_tensors if n < sample_images else ():
                x = res[t]
                flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
                step = max(1, flat.shape[1] // sample_positions)
                samples[t].append(flat[:, n % step::step][:, :sample_positions])
            for t in tensors:
                if t in channel_tensors:  # per-channel reductions below give the global range too
                    lo[t] = min(lo[t], float(np.min(res[t + "__cmin"])))
                    hi[t] = max(hi[t], float(np.max(res[t + "__cmax"])))
                    continue
                if t not in known_min:
                    lo[t] = min(lo[t], float(res[t + "__qmin"]))
                hi[t] = max(hi[t], float(res[t + "__qmax"]))
            for t in softmax_axes:
                row_max_low[t] = min(row_max_low[t], float(np.min(res[t + "__rowmax"])))
            for t in mean_inputs:
                sums[t] = sums.get(t, 0.0) + np.asarray(res[t + "__qmean"], np.float64)
            for t in channel_tensors:
                a, b = res[t + "__cmin"], res[t + "__cmax"]
                cmin[t] = a if t not in cmin else np.minimum(cmin[t], a)
                cmax[t] = b if t not in cmax else np.maximum(cmax[t], b)
                if n < STEADINESS_SAMPLES:
                    spans[t].append(np.maximum(b, 0) - np.minimum(a, 0))
            n += 1
            bar.update()
    if n == 0:
        from ..errors import DatasetError

        raise DatasetError("calibration dataset yielded no samples; list at least one image or .npy per line")
    for t in tensors:
        a, b = (lo[t] if t in channel_tensors else known_min.get(t, lo[t])), hi[t]
        if t in softmax_axes:
            a = softmax_floor(a, row_max_low[t])
        if not (np.isfinite(a) and np.isfinite(b)):
            log.warning("tensor %s had non-finite values during calibration (min %s, max %s)", t, a, b)
            a, b = (0.0 if not np.isfinite(a) else a), (0.0 if not np.isfinite(b) else b)
        stats.minmax[t] = (float(min(a, b)), float(b))
    for t, s in sums.items():
        stats.channel_mean[t] = (s / n).astype(np.float32)
    for t in cmin:
        stats.channel_minmax[t] = (cmin[t], cmax[t])
        whole = np.maximum(cmax[t], 0) - np.minimum(cmin[t], 0)
        typical = np.median(np.stack(spans[t]), axis=0)
        stats.channel_steadiness[t] = np.where(whole > 0, typical / np.where(whole > 0, whole, 1), 1.0).astype(
            np.float32)
    for t, parts in samples.items():
        stats.channel_samples[t] = np.concatenate(parts, 1)
    stats.samples = n
    stats.seconds["minmax_pass"] = time.perf_counter() - t0


def _strided_sample(x: np.ndarray, limit: int, phase: int) -> np.ndarray:
    flat = x.reshape(-1)
    if flat.size <= limit:
        return flat
    step = -(-flat.size // limit)
    step |= 1  # odd stride: no lock-step with even channel/row sizes
    return flat[phase % step::step]


def histogram_fixed(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Counts of x over [lo, hi] in ``bins`` equal bins (values outside go to the end bins)."""
    if hi <= lo:
        out = np.zeros(bins, np.int64)
        out[0] = x.size
        return out
    factor = bins / (hi - lo)
    if factor < 1e30:
        pos = (x - np.float32(lo)) * np.float32(factor)
    else:  # a range of denormals (a ReLU's 1e-39s): the float32 factor would be inf and every bin NaN
        pos = (x.astype(np.float64) - lo) * factor
    np.clip(pos, 0, bins - 1, out=pos)  # before the cast: an attention mask's -inf goes to the first bin
    return np.bincount(pos.astype(np.int32), minlength=bins)


def collect_histograms(model: onnx.ModelProto, tensors: Sequence[str], data, stats: Stats, bins: int = 2048,
                       samples_per_tensor: int = 1 << 16, progress: bool = True, threads: int = 0) -> None:
    """Pass 2: fixed-range histograms (range from pass 1) of every tensor in ``tensors``."""
    t0 = time.perf_counter()
    sess = make_session(augment(model, {}, tensors), threads)
    hists = {t: np.zeros(bins, np.int64) for t in tensors}
    ranges = [stats.minmax[t] for t in tensors]
    with _bar(len(data), "calibrate histograms", progress) as bar:
        for n, feed in enumerate(data):
            res = sess.run(list(tensors), feed)
            for t, x, (lo, hi) in zip(tensors, res, ranges):
                hists[t] += histogram_fixed(_strided_sample(x, samples_per_tensor, n), lo, hi, bins)
            bar.update()
    stats.hist.update(hists)
    stats.seconds["histogram_pass"] = time.perf_counter() - t0
