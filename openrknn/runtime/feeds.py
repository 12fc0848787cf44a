"""Turn what a user passes to inference() into the tensors the model's graph takes, checking everything."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..errors import InferenceInputError

DATA_TYPES = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16, "float16": np.float16, "float32": np.float32}
DATA_FORMATS = ("nhwc", "nchw")


def graph_dtype(meta: dict) -> str:
    """The element type the graph takes for a package input record: an NHWC image input is fed float32 (its
    record's dtype is the uint8 a user passes); any other input takes its record's dtype (e.g. int32 ids)."""
    return "float32" if meta.get("layout") == "nhwc" else (meta.get("dtype") or "float32")


def _check_args(inputs, n_inputs: int, data_type, data_format, pass_through) -> tuple:
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, np.ndarray) for x in inputs):
        raise InferenceInputError(f"inputs must be a list of numpy arrays, got {type(inputs).__name__}; e.g. "
                                  "inference(inputs=[img]) with img from cv2.imread")
    if len(inputs) != n_inputs:
        raise InferenceInputError(f"the model has {n_inputs} input(s) but {len(inputs)} were given")
    formats = [data_format] * n_inputs if isinstance(data_format, str) or data_format is None else list(data_format)
    if len(formats) != n_inputs:
        raise InferenceInputError(f"data_format has {len(formats)} entries for {n_inputs} inputs")
    formats = [(f or "nhwc").lower() for f in formats]
    for f in formats:
        if f not in DATA_FORMATS:
            raise InferenceInputError(f"data_format={f!r} is not valid; allowed: 'nhwc', 'nchw'")
    types = [data_type] * n_inputs if isinstance(data_type, str) or data_type is None else list(data_type)
    if len(types) != n_inputs:
        raise InferenceInputError(f"data_type has {len(types)} entries for {n_inputs} inputs")
    for t in types:
        if t is not None and t not in DATA_TYPES:
            raise InferenceInputError(f"data_type={t!r} is not valid; allowed: {', '.join(DATA_TYPES)}")
    if pass_through is None:
        pass_through = [0] * n_inputs
    if not isinstance(pass_through, (list, tuple)) or len(pass_through) != n_inputs:
        raise InferenceInputError(f"inputs_pass_through={pass_through!r} must be a list with one 0/1 per input "
                                  f"({n_inputs} here), e.g. [0]")
    return list(inputs), formats, types, [bool(p) for p in pass_through]


def _to_nhwc(x: np.ndarray, fmt: str, deployed: Sequence[int], name: str, many: bool = False) -> np.ndarray:
    """Bring an image input to the deployed [N,H,W,C] shape; accept a missing batch dim (and, with ``many``, any
    multiple of N frames)."""
    n, h, w, c = deployed
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InferenceInputError(f"input '{name}' must be an image of shape [H,W,C] or [N,H,W,C] (nhwc) / [N,C,H,W] "
                                  f"(nchw); got {list(x.shape)}")
    if fmt == "nchw":
        x = x.transpose(0, 2, 3, 1)
    frames_ok = x.shape[0] == n or (many and x.shape[0] > 0 and x.shape[0] % n == 0)
    if list(x.shape[1:]) != [h, w, c] or not frames_ok:
        hint = ""
        if fmt == "nhwc" and list(x.shape[1:]) == [c, h, w] and c != w:
            hint = " It looks NCHW: pass data_format='nchw'."
        elif fmt == "nchw" and list(x.shape[1:]) == [w, c, h] and h != c:
            # the array was already [N, H, W, C] (a 4-D input that is not a picture: an audio model's cache)
            hint = (f" The array you gave, [{x.shape[0]}, {h}, {w}, {c}], is already the model's own layout: pass "
                    "data_format='nhwc' for this input (a list gives one format per input).")
        elif list(x.shape[1:3]) != [h, w]:
            hint = f" Resize or letterbox the image to {w}x{h} first."
        many_hint = f" (or k x {n} frames at once)" if many else ""
        raise InferenceInputError(f"input '{name}' has shape {list(x.shape)} ({fmt}) but the model takes "
                                  f"[{n}, {h}, {w}, {c}] (nhwc){many_hint}.{hint}")
    return x


def _undo_preprocess(x: np.ndarray, pre: dict) -> np.ndarray:
    """inputs_pass_through: the user gives the already normalised tensor in model channel order (NHWC here).
    The graph applies reorder/mean/std itself, so map the tensor back to what a raw feed would have been."""
    c = x.shape[-1]
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 1, 1, -1)
    raw_model_order = x.astype(np.float32) * std + mean
    reorder = pre.get("reorder_channel") or list(range(c))
    inv = np.argsort(reorder)
    return raw_model_order[..., inv]


def prepare_feeds(inputs, input_meta: List[dict], data_type=None, data_format="nhwc",
                  pass_through: Optional[Sequence[int]] = None, many: bool = False) -> List[np.ndarray]:
    """Return one float32 (or raw-typed) array per model input, shaped as the metadata records (batch included).

    many: accept k times the deployed batch along the first axis (k frames run at once, e.g. a folder of images);
    every input must then carry the same k."""
    inputs, formats, types, passes = _check_args(inputs, len(input_meta), data_type, data_format, pass_through)
    feeds = []
    for x, meta, fmt, dtype, passed in zip(inputs, input_meta, formats, types, passes):
        name = meta["name"]
        if dtype is not None and x.dtype != DATA_TYPES[dtype]:
            if np.issubdtype(x.dtype, np.floating) and dtype in ("uint8", "int8", "int16"):
                x = np.clip(np.rint(x), np.iinfo(DATA_TYPES[dtype]).min, np.iinfo(DATA_TYPES[dtype]).max)
            x = x.astype(DATA_TYPES[dtype])
        takes = np.dtype(graph_dtype(meta))  # an image input's record says uint8, but any listed type is fine there
        if takes == np.bool_:
            # a mask (attention padding): True/False, or the 0/1 of any numeric type
            if x.dtype != np.bool_ and (x.dtype.kind not in "iuf" or (x.size and not np.isin(x, (0, 1)).all())):
                raise InferenceInputError(f"input '{name}' is a boolean mask but was given {x.dtype} values other "
                                          "than 0 and 1; pass a bool array (True where the data is)")
            x = x.astype(np.bool_, copy=False)
        elif np.issubdtype(takes, np.integer) and (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            # ids (tokens, bytes) for a graph that takes integers: any integer type whose values fit
            info = np.iinfo(takes)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise InferenceInputError(f"input '{name}' takes {takes} values but holds {x.min()} .. {x.max()}")
            x = x.astype(takes, copy=False)
        elif x.dtype not in [np.dtype(t) for t in DATA_TYPES.values()]:
            raise InferenceInputError(f"input '{name}' has dtype {x.dtype}; use one of {', '.join(DATA_TYPES)}")
        elif np.issubdtype(takes, np.integer) and x.size and not np.array_equal(x, np.rint(x)):
            raise InferenceInputError(f"input '{name}' takes {takes} values (ids, not a signal) but was given "
                                      f"{x.dtype} values that are not whole numbers; pass the integers")
        if meta["layout"] != "nhwc" and not meta["shape"]:  # a scalar input: one value, whatever its wrapping
            if x.size != 1:
                raise InferenceInputError(f"input '{name}' is a scalar, but {list(x.shape)} values were given")
            feeds.append(np.asarray(x.reshape(()), dtype=np.dtype(meta["dtype"])))
            continue
        if meta["layout"] != "nhwc":
            shape = list(meta["shape"])
            k = x.shape[0] // shape[0] if many and x.ndim == len(shape) and shape[0] and x.shape[0] % shape[0] == 0 \
                and x.shape[0] > 0 else 1
            if list(x.shape) != [shape[0] * k] + shape[1:] and list(x.shape) != shape[1:]:
                raise InferenceInputError(f"input '{name}' has shape {list(x.shape)}, the model takes {shape}")
            feeds.append(np.ascontiguousarray(x.reshape([shape[0] * k] + shape[1:]).astype(np.dtype(meta["dtype"]),
                                                                                              copy=False)))
            continue
        x = _to_nhwc(x, fmt, meta["shape"], name, many)
        x = x.astype(np.float32, copy=False)
        if passed and meta.get("preprocess"):
            x = _undo_preprocess(x, meta["preprocess"])
        feeds.append(np.ascontiguousarray(x))
    if many and len({f.shape[0] // max(1, m["shape"][0]) for f, m in zip(feeds, input_meta) if m["shape"]}) > 1:
        raise InferenceInputError("inputs carry different numbers of frames "
                                  f"{[f.shape[0] for f in feeds]}; give every input the same number")
    return feeds
