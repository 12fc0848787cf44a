"""Run vendor .rknn files on the board's NPU through rknn-toolkit-lite2 (`rknnlite.api.RKNNLite`), when installed.

The board server keeps running openrknn's own packages on onnxruntime; a vendor file (what `openrknn vendor-export`
writes) goes to the NPU here. rknn-toolkit-lite2 installs only on aarch64 boards, so it is imported lazily and its
absence is one clear error. A vendor export may come with a host-side tail (`OUT.rknn.post.onnx`: the float ops after
the last quantized tensors); pass its bytes as `post` and run() returns the model's real outputs.
"""

from __future__ import annotations

import importlib
from typing import List, Optional, Sequence

import numpy as np

from ..errors import CorruptPackageError, NotSupportedError, RuntimeStateError

# RKNNLite.init_runtime(core_mask=...) values on RK3588 (NPU_CORE_AUTO lets the driver choose)
CORE_MASKS = {"auto": 0, "0": 1, "1": 2, "2": 4, "0_1": 3, "0_1_2": 7, "all": 0xFFFF}


def is_vendor_file(data: bytes) -> bool:
    """A vendor RKNN-Toolkit model (plain or encrypted), as opposed to an openrknn package."""
    head = bytes(data[:8])
    return head.startswith((b"RKNN", b"CYPTRKNN")) or head[4:8] == b"RKNN"


def parse_core_mask(value) -> int:
    """'auto', '0', '1', '2', '0_1', '0_1_2', 'all' or an integer bit mask -> RKNNLite's core_mask integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        mask = value
    else:
        text = str(value).strip().lower()
        if text in CORE_MASKS:
            return CORE_MASKS[text]
        try:
            mask = int(text, 0)
        except ValueError:
            raise NotSupportedError(f"NPU core mask {value!r} is not valid; use one of {', '.join(CORE_MASKS)} or a "
                                    "bit mask such as 0x3") from None
    if not 0 <= mask <= 0xFFFF:
        raise NotSupportedError(f"NPU core mask {value!r} is out of range; use 0 (auto) .. 0xffff (all cores)")
    return mask


def _load_rknnlite():
    try:
        return importlib.import_module("rknnlite.api").RKNNLite
    except ImportError as e:
        raise NotSupportedError("running a vendor .rknn on the NPU needs rknn-toolkit-lite2 on the board (pip install "
                                "rknn-toolkit-lite2, aarch64 only; plus librknnrt.so from Rockchip's runtime). "
                                f"Import failed: {e}") from e


class NpuLiteModel:
    """One vendor model loaded on the NPU: load_rknn -> init_runtime(core_mask) -> inference -> release."""

    def __init__(self, rknn_path: str, core_mask=0, post: Optional[bytes] = None, post_inputs: Sequence[str] = ()):
        RKNNLite = _load_rknnlite()
        self._lite = RKNNLite()
        self.core_mask = parse_core_mask(core_mask)
        ret = self._lite.load_rknn(rknn_path)
        if ret != 0:
            self._lite.release()
            raise RuntimeStateError(f"RKNNLite.load_rknn({rknn_path!r}) returned {ret}: the file is not a vendor "
                                    "model for this board's runtime (check the target chip and the toolkit version)")
        ret = self._lite.init_runtime(core_mask=self.core_mask)
        if ret != 0:
            self._lite.release()
            raise RuntimeStateError(f"RKNNLite.init_runtime(core_mask={self.core_mask:#x}) returned {ret}: the NPU "
                                    "driver or librknnrt.so is missing or too old, or the core mask names cores this "
                                    "chip does not have")
        self._post = None
        self._post_inputs = list(post_inputs)
        if post:
            from .simulator import make_session

            try:
                self._post = make_session(post)
            except Exception as e:  # the NPU context is held: give it back before refusing the tail
                self._lite.release()
                self._lite = None
                raise CorruptPackageError(f"the vendor model's host-side tail (.post.onnx) cannot be opened by this "
                                          f"board's onnxruntime ({str(e).splitlines()[0][:200]}); export it again "
                                          "with `openrknn vendor-export`, or update onnxruntime on the board") \
                    from None
            if not self._post_inputs:
                self._post_inputs = [i.name for i in self._post.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray], data_format: str = "nhwc") -> List[np.ndarray]:
        if self._lite is None:
            raise RuntimeStateError("this NPU model was released; load it again")
        outs = self._lite.inference(inputs=list(inputs), data_format=data_format)
        if outs is None:
            raise RuntimeStateError("RKNNLite.inference returned None (the board runtime logged why)")
        outs = [np.asarray(o) for o in outs]
        if self._post is None:
            return outs
        if len(outs) != len(self._post_inputs):
            raise RuntimeStateError(f"the vendor model returned {len(outs)} outputs but its host-side tail takes "
                                    f"{len(self._post_inputs)}; the .post.onnx does not belong to this .rknn")
        return self._post.run(None, {n: o.astype(np.float32) for n, o in zip(self._post_inputs, outs)})

    def release(self) -> None:
        if self._lite is not None:
            try:
                self._lite.release()
            finally:
                self._lite = None
