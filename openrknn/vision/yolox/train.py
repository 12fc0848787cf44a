"""Train the built-in YOLOX eye detector on procedural synthetic data (generated on the fly), and evaluate it.

    python -m openrknn.vision.yolox.train --out openrknn/models/eye_yolox_nano.pth --minutes 50

Pre-processing is the deployment contract of the seed: centred letterbox with pad 128, BGR -> RGB, then ImageNet
mean / std. Training runs at a small square input (fully convolutional), evaluation at 416.
Assignment is SimOTA (YOLOX): candidates are anchor points inside a box or within 2.5 strides of its centre; each box
takes its dynamic-k lowest-cost candidates (k = the rounded sum of its 10 best IoUs), cost = class BCE + 3 * -log IoU.
Loss = 5 * (1 - IoU^2) on positives + objectness BCE on all anchors + IoU-aware class BCE on positives, per positive.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openrknn.atomic import write_atomic
from openrknn.vision.eyes import DEFAULT_INPUT_SIZE, DEFAULT_MEAN_RGB, DEFAULT_PAD_VALUE, DEFAULT_STD_RGB
from openrknn.vision.eyes.synth import CLASS_NAMES, generate_sample, read_dataset, write_dataset
from openrknn.vision.letterbox import letterbox, letterbox_boxes
from openrknn.vision.yolox.decode import postprocess_yolox
from openrknn.vision.yolox.evaluate import MapResult, evaluate_map
from openrknn.vision.yolox.model import STRIDES, YoloBody

log = logging.getLogger("openrknn.vision.yolox.train")

MEAN_RGB = np.array(DEFAULT_MEAN_RGB, np.float32)
STD_RGB = np.array(DEFAULT_STD_RGB, np.float32)
PAD_VALUE = DEFAULT_PAD_VALUE
EVAL_SIZE = DEFAULT_INPUT_SIZE
# frame shapes (w/h) the training images take before letterboxing, so the model sees padding bands as deployed
_ASPECTS = (1.0, 4 / 3, 3 / 4, 16 / 9)


def preprocess(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, object]:
    """Letterbox (centred, pad 128) + BGR->RGB + mean/std: returns (CHW float32, LetterboxTransform)."""
    lb, tf = letterbox(image_bgr, size, mode="center", pad_value=PAD_VALUE)
    x = (lb[:, :, ::-1].astype(np.float32) - MEAN_RGB) / STD_RGB
    return np.ascontiguousarray(x.transpose(2, 0, 1)), tf


def make_batch(rng: np.random.Generator, batch: int, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A batch of fresh synthetic images at `size`: inputs [B, 3, S, S] and per-image targets [N, 5] (cls, xyxy)."""
    xs, targets = [], []
    for _ in range(batch):
        ar = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
        w, h = (size, max(64, round(size / ar))) if ar >= 1 else (max(64, round(size * ar)), size)
        img, boxes, classes = generate_sample(rng, (w, h))
        x, tf = preprocess(img, size)
        b = letterbox_boxes(boxes, tf) if len(boxes) else boxes
        xs.append(torch.from_numpy(x))
        targets.append(torch.from_numpy(np.concatenate([classes[:, None].astype(np.float32), b], 1)))
    return torch.stack(xs), targets


def init_detector(model: YoloBody, prior_prob: float = 0.01) -> None:
    """YOLOX head init: objectness / class biases start at a low prior so early losses are not swamped by background."""
    bias = -math.log((1 - prior_prob) / prior_prob)
    for conv in list(model.head.cls_preds) + list(model.head.obj_preds):
        nn.init.constant_(conv.bias, bias)


def flatten_outputs(outs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-level maps -> (preds [B, A, 5+nc] with decoded xyxy boxes in cols 0..3, grid centres [A, 2], strides [A])."""
    preds, centres, strides = [], [], []
    for out, s in zip(outs, STRIDES):
        b, c, h, w = out.shape
        p = out.permute(0, 2, 3, 1).reshape(b, h * w, c)
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        g = torch.stack([gx, gy], -1).reshape(-1, 2).float()
        cxy = (p[..., :2] + g) * s
        wh = torch.exp(p[..., 2:4].clamp(max=10.0)) * s
        preds.append(torch.cat([cxy - wh / 2, cxy + wh / 2, p[..., 4:]], -1))
        centres.append((g + 0.5) * s)
        strides.append(torch.full((h * w,), float(s)))
    return torch.cat(preds, 1), torch.cat(centres), torch.cat(strides)


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


@torch.no_grad()
def simota_assign(pred_boxes: torch.Tensor, pred_obj: torch.Tensor, pred_cls: torch.Tensor, centres: torch.Tensor,
                  strides: torch.Tensor, gt_boxes: torch.Tensor, gt_cls: torch.Tensor, num_classes: int,
                  radius: float = 2.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: returns (fg mask [A], matched gt index per fg anchor, IoU of each fg anchor with its gt)."""
    a = centres.shape[0]
    g = gt_boxes.shape[0]
    in_box = ((centres[None] > gt_boxes[:, None, :2]) & (centres[None] < gt_boxes[:, None, 2:])).all(-1)
    gc = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    r = radius * strides[None, :, None]
    in_ctr = ((centres[None] > gc[:, None] - r) & (centres[None] < gc[:, None] + r)).all(-1)
    cand = (in_box | in_ctr).any(0)
    if not cand.any():
        return torch.zeros(a, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    both = (in_box & in_ctr)[:, cand]
    ious = _pair_iou(gt_boxes, pred_boxes[cand])  # [G, C]
    scores = (pred_cls[cand].sigmoid() * pred_obj[cand].sigmoid()[:, None]).sqrt()  # [C, nc]
    onehot = F.one_hot(gt_cls, num_classes).float()
    cls_cost = F.binary_cross_entropy(scores[None].expand(g, -1, -1).clamp(1e-6, 1 - 1e-6),
                                      onehot[:, None].expand(-1, scores.shape[0], -1), reduction="none").sum(-1)
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).float()
    k_top = min(10, ious.shape[1])
    dyn_k = torch.topk(ious, k_top, dim=1).values.sum(1).int().clamp(min=1)
    match = torch.zeros_like(cost)
    for i in range(g):
        idx = torch.topk(cost[i], int(min(dyn_k[i], cost.shape[1])), largest=False).indices
        match[i, idx] = 1.0
    multi = match.sum(0) > 1
    if multi.any():  # an anchor claimed by several boxes goes to the cheapest one
        best = cost[:, multi].argmin(0)
        match[:, multi] = 0.0
        match[best, multi.nonzero().squeeze(1)] = 1.0
    fg_c = match.sum(0) > 0
    gt_idx = match[:, fg_c].argmax(0)
    fg = torch.zeros(a, dtype=torch.bool)
    fg[cand.nonzero().squeeze(1)[fg_c]] = True
    return fg, gt_idx, ious[gt_idx, fg_c.nonzero().squeeze(1)]


def yolox_loss(outs: Sequence[torch.Tensor], targets: list[torch.Tensor], num_classes: int) -> tuple[torch.Tensor,
                                                                                                      dict]:
    """Total loss of a batch and its parts (iou, obj, cls, num_fg)."""
    preds, centres, strides = flatten_outputs(outs)
    bsz, a = preds.shape[:2]
    obj_t = torch.zeros(bsz, a)
    box_p, box_t, cls_p, cls_t = [], [], [], []
    for b in range(bsz):
        t = targets[b]
        if t.shape[0] == 0:
            continue
        p = preds[b]
        fg, gt_idx, iou = simota_assign(p[:, :4].detach(), p[:, 4].detach(), p[:, 5:].detach(), centres, strides,
                                        t[:, 1:], t[:, 0].long(), num_classes)
        if not fg.any():
            continue
        obj_t[b, fg] = 1.0
        box_p.append(p[fg, :4])
        box_t.append(t[gt_idx, 1:])
        cls_p.append(p[fg, 5:])
        cls_t.append(F.one_hot(t[gt_idx, 0].long(), num_classes).float() * iou[:, None])
    num_fg = max(1, sum(x.shape[0] for x in box_p))
    loss_obj = F.binary_cross_entropy_with_logits(preds[..., 4], obj_t, reduction="sum") / num_fg
    if box_p:
        bp, bt = torch.cat(box_p), torch.cat(box_t)
        lt = torch.max(bp[:, :2], bt[:, :2])
        rb = torch.min(bp[:, 2:], bt[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        union = (bp[:, 2:] - bp[:, :2]).prod(-1) + (bt[:, 2:] - bt[:, :2]).prod(-1) - inter
        iou = inter / (union + 1e-9)
        loss_iou = (1 - iou ** 2).sum() / num_fg
        loss_cls = F.binary_cross_entropy_with_logits(torch.cat(cls_p), torch.cat(cls_t), reduction="sum") / num_fg
    else:
        loss_iou = loss_cls = preds.sum() * 0.0
    total = 5.0 * loss_iou + loss_obj + loss_cls
    parts = {"iou": float(loss_iou.detach()), "obj": float(loss_obj.detach()), "cls": float(loss_cls.detach())}
    return total, parts | {"num_fg": num_fg}


class ModelEMA:
    """Exponential moving average of the weights (and BN buffers); the averaged model is the one evaluated/saved."""

    def __init__(self, model: nn.Module, decay: float = 0.9995, ramp: float = 500.0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def save_weights_atomic(state: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


@torch.no_grad()
def predict(model: nn.Module, image_bgr: np.ndarray, size: int = EVAL_SIZE, score_thr: float = 0.01,
            nms_thr: float = 0.45):
    """Detections (original-image pixels) of one BGR image with the deployment pre-processing."""
    x, tf = preprocess(image_bgr, size)
    outs = model(torch.from_numpy(x)[None])
    return postprocess_yolox([o.numpy() for o in outs], tf, num_classes=len(CLASS_NAMES), score_thr=score_thr,
                             nms_thr=nms_thr, layout="maps")


def evaluate_model(model: nn.Module, images: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                   gt_classes: Sequence[np.ndarray], size: int = EVAL_SIZE) -> MapResult:
    """mAP@0.5 of the model on the given images (evaluated at `size`, letterboxed)."""
    was_training = model.training
    model.eval()
    dets = []
    for img in images:
        d = predict(model, img, size)
        dets.append((d.boxes, d.scores, d.class_ids))
    model.train(was_training)
    return evaluate_map(dets, list(zip(gt_boxes, gt_classes)), len(CLASS_NAMES), 0.5)


def evaluate_folder(model: nn.Module, folder: str | Path, size: int = EVAL_SIZE) -> MapResult:
    """mAP@0.5 on a folder written by write_dataset."""
    import cv2

    paths, boxes, classes = read_dataset(folder)
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    return evaluate_model(model, images, boxes, classes, size)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on BN and biases, as YOLOX
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(out: str | Path, steps: int = 4000, batch: int = 16, sizes: Sequence[int] = (256, 288, 320),
          lr: float = 2e-3, seed: int = 0, minutes: float | None = None, val_images: int = 64,
          val_every: int = 250, threads: int | None = 1, warmup: int = 200,
          init: str | Path | None = None, tag: str = "train") -> dict:
    """Train YoloBody(3, 'nano') from scratch; keep the EMA weights with the best validation mAP at `out`.

    Stops at `steps` or after `minutes` of wall time, whichever comes first (the cosine schedule is laid out over
    `steps`, so give a step count that fits the time). init: start from these weights (fine-tuning / continuing a
    stopped run with a fresh schedule) instead of from scratch.
    Returns a summary dict (also written next to `out` as JSON).
    """
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = YoloBody(len(CLASS_NAMES), "nano")
    init_detector(model)
    if init is not None:
        model.load_state_dict(torch.load(str(init), map_location="cpu", weights_only=True), strict=True)
    model.train()
    ema = ModelEMA(model)
    opt = torch.optim.AdamW(_param_groups(model, 5e-4), lr=lr, betas=(0.9, 0.999))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    # a validation stream disjoint from the training one (different seed) for picking the best checkpoint
    vrng = np.random.default_rng(seed + 10_000)
    val = [generate_sample(vrng, (640, 480)) for _ in range(val_images)]
    out = Path(out)
    best, history, t0 = -1.0, [], time.time()
    if init is not None:  # a continued run only replaces `out` when it beats the weights it started from
        best = evaluate_model(ema.ema, [v[0] for v in val], [v[1] for v in val], [v[2] for v in val]).map
        history.append({"step": 0, "minutes": 0.0, "val_map": round(best, 4)})
        log.info("starting from %s: val mAP@0.5 %.4f", init, best)
    from ...progress import progress_bar

    bar = progress_bar(range(steps), desc="train", unit="step", mininterval=10)
    step = 0
    for step in bar:
        size = int(sizes[int(rng.integers(len(sizes)))])
        x, targets = make_batch(rng, batch, size)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, parts = yolox_loss(model(x), targets, len(CLASS_NAMES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        loss_v = float(loss.detach())
        bar.set_postfix(loss=f"{loss_v:.3f}", fg=parts["num_fg"], refresh=False)
        elapsed = time.time() - t0
        last = step == steps - 1 or (minutes is not None and elapsed > minutes * 60)
        if (step + 1) % val_every == 0 or last:
            res = evaluate_model(ema.ema, [v[0] for v in val], [v[1] for v in val], [v[2] for v in val])
            history.append({"step": step + 1, "minutes": round(elapsed / 60, 2), "loss": round(loss_v, 4),
                            "val_map": round(res.map, 4), "val_ap": [round(float(a), 4) for a in res.ap]})
            log.info("step %d  %.1f min  loss %.3f  val mAP@0.5 %.4f  AP %s", step + 1, elapsed / 60, loss_v,
                     res.map, np.round(res.ap, 3).tolist())
            if res.map > best:
                best = res.map
                save_weights_atomic(ema.ema.state_dict(), out)
            save_weights_atomic(ema.ema.state_dict(), out.with_suffix(".last.pth"))
        if last:
            break
    summary = {"steps_done": step + 1, "minutes": round((time.time() - t0) / 60, 2), "best_val_map": best,
               "batch": batch, "sizes": list(sizes), "lr": lr, "seed": seed,
               "init": None if init is None else str(init), "history": history}
    report = out.with_suffix(f".{tag}.json")
    tmp = report.with_name(f".{report.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, report)
    return summary


def _load(weights: str | Path) -> YoloBody:
    model = YoloBody(len(CLASS_NAMES), "nano")
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True), strict=True)
    return model.float().eval()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--out", help="where to write the best weights (.pth state dict)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="256,288,320", help="training input sizes, one picked per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="wall-time limit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default=None, help="start from these weights instead of from scratch")
    ap.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps")
    ap.add_argument("--then-steps", type=int, default=0,
                    help="then continue from the best weights with a fresh cosine schedule of this many steps")
    ap.add_argument("--then-sizes", default="320,352,384", help="training sizes of the second phase")
    ap.add_argument("--then-lr", type=float, default=4e-4)
    ap.add_argument("--then-minutes", type=float, default=None)
    ev = sub.add_parser("eval", help="mAP@0.5 of weights on a synthetic held-out set")
    ev.add_argument("weights")
    ev.add_argument("--folder", help="a write_dataset folder; generated (seed 12345, 640x480) when missing")
    ev.add_argument("--n", type=int, default=200)
    ev.add_argument("--seed", type=int, default=12345, dest="eval_seed")
    ev.add_argument("--size", type=int, default=EVAL_SIZE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "eval":
        torch.set_num_threads(args.threads)
        folder = Path(args.folder or f"/tmp/openrknn_eyes_eval_{args.eval_seed}_{args.n}")
        if not (folder / "labels.json").is_file():
            write_dataset(folder, args.n, args.eval_seed, (640, 480))
        t = time.time()
        res = evaluate_folder(_load(args.weights), folder, args.size)
        print(json.dumps(res.as_dict(CLASS_NAMES) | {"folder": str(folder), "seconds": round(time.time() - t, 1)},
                         indent=1))
        return 0
    if not args.out:
        ap.error("--out is required for training")
    summary = train(args.out, steps=args.steps, batch=args.batch, sizes=[int(s) for s in args.sizes.split(",")],
                    lr=args.lr, seed=args.seed, minutes=args.minutes, threads=args.threads, init=args.init,
                    warmup=args.warmup)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    if args.then_steps > 0:
        # larger inputs late in training sharpen the small pupil boxes at the 416 deployment size
        summary = train(args.out, steps=args.then_steps, batch=args.batch,
                        sizes=[int(s) for s in args.then_sizes.split(",")], lr=args.then_lr, seed=args.seed + 1,
                        minutes=args.then_minutes, threads=args.threads, init=args.out, warmup=50, tag="train2")
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
