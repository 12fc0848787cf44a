"""Helpers for tests, benchmarks and local experiments; the product never imports this module."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

from .runtime.server.config import ServerSetupError


def spawn_server(args: Sequence[str] = (), env: Optional[dict] = None, timeout: float = 30.0,
                 stderr=None, preexec_fn: Optional[Callable[[], None]] = None,
                 cwd: Optional[str] = None) -> Tuple[subprocess.Popen, int]:
    """Start `python -m openrknn.runtime.server --port 0 *args` as a child process and wait until it listens.
    Returns (process, port); the caller stops the process. preexec_fn: e.g. resource limits for the child; cwd: its
    working folder (`python -m` imports from there first)."""
    cmd = [sys.executable, "-m", "openrknn.runtime.server", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, preexec_fn=preexec_fn,
                            cwd=cwd)
    result: Dict[str, str] = {}

    def read_first_line():
        result["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout)
    line = result.get("line", "")
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise ServerSetupError(f"the server did not start within {timeout:g} s (exit code {proc.returncode}, "
                               f"first line {line!r}); run `{' '.join(cmd)}` by hand to see why")
    port = int(line.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
    return proc, port


def textbook_gptq(w, scale, zp, qmin: int, qmax: int, G):
    """GPTQ as its paper writes it, the reference quant/algorithms/gptq.py is held to: U the upper Cholesky factor
    of (G + damping)^-1 from a general inverse, columns in order of decreasing diag G (one G [K, K] for all rows),
    each column's error e_j = (w_j - dequant(q_j)) / U_jj taken off the later columns as e_j U_j,j+1:. Unblocked,
    float64; the same damping and dead-input rule as gptq.py. Returns int64 [rows, K]."""
    import numpy as np

    from .quant.algorithms.gptq import DAMP

    G = np.asarray(G, np.float64)
    order = np.argsort(-np.diag(G), kind="stable")
    H = G[np.ix_(order, order)]
    diag = np.diag(H).copy()
    H[np.diag_indices_from(H)] += DAMP * max(diag.mean(), 1e-30) + (diag <= 0) * max(diag.mean(), 1e-30)
    hinv = np.linalg.inv(H)
    U = np.linalg.cholesky((hinv + hinv.T) / 2).T
    s = np.asarray(scale, np.float64)
    z = np.asarray(zp, np.float64)
    W = np.array(w, np.float64)[:, order]
    Q = np.empty_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = np.clip(np.rint(W[:, j] / s) + z, qmin, qmax)
        err = (W[:, j] - (Q[:, j] - z) * s) / U[j, j]
        W[:, j + 1:] -= err[:, None] * U[j, j + 1:][None]
    out = np.empty_like(Q)
    out[:, order] = Q
    return out.astype(np.int64)


def yolox_cells(size: int):
    """YOLOX's anchor points at input ``size`` (strides 8, 16, 32), level after level: (cell x, y [1, N, 2], stride
    [1, N, 1]), float32; a decode is (xy + cell) * stride and exp(wh) * stride."""
    import numpy as np

    cells, strides = [], []
    for stride in (8, 16, 32):
        gy, gx = np.mgrid[:size // stride, :size // stride]
        cells.append(np.stack([gx.ravel(), gy.ravel()], 1))
        strides.append(np.full((gx.size, 1), float(stride)))
    return (np.concatenate(cells)[None].astype(np.float32), np.concatenate(strides)[None].astype(np.float32))


def yolov7_end2end(head_path, out_path, size: int = 416, classes: int = 80, per_class: bool = False):
    """A YOLOX head with an "end2end" tail as yolov7-style exporters (export.py --end2end, for onnxruntime)
    write it with torch: decode, boxes to corners by a constant 4x4 MatMul, the best class per box (ReduceMax,
    ArgMax), each class's boxes moved apart by class x 640 so one NMS keeps classes apart, NonMaxSuppression, then
    the kept rows read back by advanced indexing (Shape / Gather / Flatten / Mul / Add index arithmetic): one
    [K, 7] output = batch, x1, y1, x2, y2, class, score. ``per_class``: the variant other forks write (an NMS
    over every class's scores [1, C, N], its rows split apart by unbind, each row's score read back at
    (batch, class, box)). ``head_path``: a YOLOX raw head ([1, N, 5 + classes]) at opset 11, as the shared
    YOLOX-nano; the tail is exported at that opset with torch's TorchScript exporter and joined with onnx.compose.
    Returns ``out_path``."""
    import os
    import tempfile

    import onnx
    import torch
    from onnx import compose, helper

    class NMS(torch.autograd.Function):
        @staticmethod
        def forward(ctx, boxes, scores, limit, iou, score_min):
            return torch.zeros(4, 3, dtype=torch.int64)  # export traces the shape only

        @staticmethod
        def symbolic(g, boxes, scores, limit, iou, score_min):
            return g.op("NonMaxSuppression", boxes, scores, limit, iou, score_min)

    class Tail(torch.nn.Module):
        def __init__(self):
            super().__init__()
            grid, stride = yolox_cells(size)
            self.register_buffer("grid", torch.tensor(grid))
            self.register_buffer("stride", torch.tensor(stride))
            self.register_buffer("corners", torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [-.5, 0, .5, 0],
                                                          [0, -.5, 0, .5]], dtype=torch.float32))

        def forward(self, x):
            xy = (x[:, :, :2] + self.grid) * self.stride
            wh = torch.exp(x[:, :, 2:4]) * self.stride
            boxes = torch.cat([xy, wh], 2) @ self.corners
            scores = x[:, :, 5:] * x[:, :, 4:5]
            if per_class:
                by_class = scores.transpose(1, 2).contiguous()
                b, c, i = NMS.apply(boxes, by_class, torch.tensor([100]), torch.tensor([0.45]),
                                    torch.tensor([0.3])).unbind(1)
                return torch.cat([b.unsqueeze(1).float(), boxes[b, i, ...], c.unsqueeze(1).float(),
                                  by_class[b, c, i].unsqueeze(1)], 1)
            best, cls = scores.max(2, keepdim=True)
            kept = NMS.apply(boxes + cls.float() * 640, best.transpose(1, 2).contiguous(), torch.tensor([100]),
                             torch.tensor([0.45]), torch.tensor([0.3]))
            b, i = kept[:, 0], kept[:, 2]
            return torch.cat([b.unsqueeze(1).float(), boxes[b, i, :], cls[b, i, :].float(), best[b, i, :]], 1)

    boxes = sum((size // s) ** 2 for s in (8, 16, 32))
    with tempfile.TemporaryDirectory() as tmp:
        torch.onnx.export(Tail(), torch.rand(1, boxes, 5 + classes), os.path.join(tmp, "tail.onnx"),
                          input_names=["raw"], output_names=["dets"], opset_version=11, dynamo=False,
                          dynamic_axes={"dets": {0: "K"}})
        head, tail = onnx.load(str(head_path)), onnx.load(os.path.join(tmp, "tail.onnx"))
    tail.ir_version = head.ir_version
    model = compose.merge_models(head, tail, io_map=[(head.graph.output[0].name, "raw")])
    opsets = {o.domain: o.version for o in model.opset_import}  # one entry per domain, as one exporter writes it
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.save(model, str(out_path))
    return out_path
