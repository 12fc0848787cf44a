"""yolox-pytorch `.pth` state dict -> traced TorchScript `.pt` (what load_pytorch and the vendor toolkit take).

The seed does this with a bare `load_state_dict` + `torch.jit.trace`; the failure modes users hit are a wrong phi
or num_classes (a wall of key/shape errors), a checkpoint wrapped in {'model': ...}, or a file that is not a state
dict at all. Each of those becomes one ModelLoadError that says what the file looks like and what to pass instead.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from openrknn.atomic import write_atomic
from openrknn.errors import BuildError, ConfigError, ModelLoadError
from openrknn.vision.yolox.model import PHI_MULTIPLIERS, STRIDES, YoloBody, check_phi, default_depthwise

log = logging.getLogger("openrknn.vision.yolox")

TRACE_TOLERANCE = 1e-5
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_CLS_PRED_KEY = "head.cls_preds.0.weight"
_STEM_KEY = "backbone.backbone.stem.conv.conv.weight"
_DW_PROBE_KEY = "backbone.backbone.dark2.0.dconv.conv.weight"
_SHOW = 10  # keys listed per category in error messages


def _is_torchscript_archive(path: Path) -> bool:
    # torch.save and torch.jit.save both write zips; only TorchScript ones carry code/ and constants.pkl.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in zf.namelist())


def load_state_dict_file(weights: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` that is a state dict or a checkpoint dict wrapping one; tensors only, no code unpickled."""
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: '{path}'. Pass the .pth written by "
                             "torch.save(model.state_dict())")
    if _is_torchscript_archive(path):
        raise ModelLoadError(
            f"'{path}' is already a TorchScript model, not a state dict: pass it to load_pytorch directly"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError) for bad files
        raise ModelLoadError(
            f"'{path}' is not a readable PyTorch state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Expected a .pth saved with torch.save(model.state_dict()); a whole pickled model is refused because "
            "loading it would run arbitrary code: re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                log.info("'%s': using the state dict under checkpoint key '%s'", path, key)
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelLoadError(
            f"'{path}' holds a {type(obj).__name__}, not a state dict (a non-empty mapping of name -> tensor). "
            "Save the model with torch.save(model.state_dict(), path)"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"'{path}' is a dict but not a state dict: {len(bad)} entries are not name -> tensor "
            f"(e.g. {bad[:3]!r}; top-level keys: {list(obj)[:8]!r})"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Guess phi, num_classes and depthwise of a yolox-pytorch state dict from its layer shapes (None if unknown)."""
    info: dict[str, Any] = {"phi": None, "num_classes": None, "depthwise": None}
    cls = state.get(_CLS_PRED_KEY)
    if cls is not None and cls.ndim == 4:
        info["num_classes"] = int(cls.shape[0])
    info["depthwise"] = _DW_PROBE_KEY in state
    stem = state.get(_STEM_KEY)
    if stem is not None and stem.ndim == 4:
        prefix = "backbone.backbone.dark3.1.m."  # dark3 holds 3x the base depth of bottlenecks: tells m/l/x apart
        blocks = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
        for phi, (depth, width) in PHI_MULTIPLIERS.items():
            if int(width * 64) == stem.shape[0] and max(round(depth * 3), 1) * 3 == len(blocks):
                info["phi"] = phi
    return info


def _mismatch_message(path: str, phi: str, num_classes: int, depthwise: bool, expected: Mapping[str, torch.Tensor],
                      got: Mapping[str, torch.Tensor]) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: model {tuple(expected[k].shape)} vs file {tuple(got[k].shape)}"
              for k in expected if k in got and expected[k].shape != got[k].shape]
    lines = [f"'{path}' does not fit YoloBody(num_classes={num_classes}, phi='{phi}', depthwise={depthwise})"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (first {_SHOW})" if len(items) > _SHOW else ""
            lines.append(f"  {len(items)} {title}{more}:")
            lines.extend(f"    {item}" for item in items[:_SHOW])
    guess = describe_state_dict(got)
    if guess["phi"] or guess["num_classes"]:
        parts = [f"phi={guess['phi']!r}" if guess["phi"] else "phi=unknown",
                 f"num_classes={guess['num_classes']}" if guess["num_classes"] else "num_classes=unknown"]
        if guess["phi"] and guess["depthwise"] != default_depthwise(guess["phi"]):
            parts.append(f"depthwise={guess['depthwise']}")
        lines.append(f"  hint: this file looks like {', '.join(parts)}; pass the phi / num_classes it was trained with")
    else:
        lines.append("  hint: this file does not look like a yolox-pytorch YoloBody state dict at all; "
                     "check that it is the right .pth")
    return "\n".join(lines)


def load_yolox(weights: str | Path, phi: str, num_classes: int, act: str = "silu",
               depthwise: bool | None = None) -> YoloBody:
    """Build YoloBody and load `weights` strictly; eval mode. Raises ModelLoadError on any key or shape mismatch."""
    check_phi(phi)
    state = load_state_dict_file(weights)
    model = YoloBody(num_classes, phi, depthwise=depthwise, act=act)
    expected = model.state_dict()
    if set(expected) != set(state) or any(expected[k].shape != state[k].shape for k in expected):
        raise ModelLoadError(_mismatch_message(str(weights), phi, num_classes, model.depthwise, expected, state))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _input_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 and v % STRIDES[-1] == 0 for v in hw):
        raise ConfigError("size", size, f"an int or (height, width), each a positive multiple of {STRIDES[-1]}",
                          "the PAFPN concatenates stride-32 maps with upsampled ones, so e.g. 416 or (384, 640)")
    return hw  # type: ignore[return-value]


def _save_atomic(module: torch.jit.ScriptModule, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, module.save)


def export_torchscript(weights: str | Path, phi: str, num_classes: int, size: int | tuple[int, int],
                       out: str | Path, act: str = "silu", depthwise: bool | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """Load a yolox-pytorch .pth strictly, trace it at [1, 3, H, W] and save the TorchScript to `out` atomically.

    The trace is checked against the eager model on a second random input (max abs diff <= 1e-5) before anything
    is written. Returns out, input_shape, output_shapes, max_abs_diff, params (trainable parameter count), phi,
    num_classes, act, depthwise.
    """
    h, w = _input_hw(size)
    model = load_yolox(weights, phi, num_classes, act=act, depthwise=depthwise)
    gen = torch.Generator().manual_seed(seed)
    # Normalised-image-like inputs; two different ones so the check is not on the traced example itself.
    example, probe = (torch.randn(1, 3, h, w, generator=gen) for _ in range(2))
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        eager_out = model(probe)
        traced_out = traced(probe)
    diff = max(float((a - b).abs().max()) for a, b in zip(eager_out, traced_out))
    if not diff <= TRACE_TOLERANCE:
        raise BuildError(f"traced YOLOX differs from the eager model by {diff:.3g} (> {TRACE_TOLERANCE:g}); "
                         "the model has data-dependent control flow that torch.jit.trace cannot capture")
    out_path = Path(out)
    _save_atomic(traced, out_path)
    log.info("exported %s (phi=%s, nc=%d, %dx%d) max |traced - eager| = %.3g", out_path, phi, num_classes, h, w, diff)
    return {
        "out": str(out_path),
        "phi": phi,
        "num_classes": num_classes,
        "act": act,
        "depthwise": model.depthwise,
        "input_shape": [1, 3, h, w],
        "output_shapes": [list(o.shape) for o in eager_out],
        "max_abs_diff": diff,
        "params": sum(p.numel() for p in model.parameters()),
    }


def build_random_yolox(phi: str, num_classes: int, seed: int, act: str = "silu",
                       depthwise: bool | None = None) -> YoloBody:
    """YoloBody in eval mode with deterministic random weights and BN statistics (for tests and benchmarks).

    Weights are scaled by fan-in and BN stats randomised so activations neither vanish nor explode through the
    ~100 layers and the outputs carry signal worth quantizing and decoding.
    """
    model = YoloBody(num_classes, phi, depthwise=depthwise, act=act)
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(uniform(module.running_var, 0.5, 2.0))
    return model.eval()
