"""Procedural synthetic eye images with iris / pupil / shut-eye boxes, for training and testing the default detector.

Each eye is painted in its own upright canvas (colour + coverage alpha + one label mask per class), then rotated,
scaled and placed on a skin region over a cluttered background. Boxes come from the warped label masks, so they follow
occlusion by the eyelids and rotation exactly: the iris box is the visible part of the iris, the pupil box the visible
part of the pupil (always inside the iris box), the shut-eye box the closed lid line with its lashes.
Everything is drawn from one numpy Generator, so a seed reproduces a sample bit for bit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from ...progress import progress_bar

from openrknn.atomic import write_bytes_atomic
from openrknn.errors import ConfigError, DatasetError

log = logging.getLogger("openrknn.vision.eyes")

CLASS_NAMES = ("iris", "pupil", "shut-eye")
IRIS, PUPIL, SHUT = 0, 1, 2

SizeArg = Union[int, tuple[int, int]]

# BGR skin tones from very light to very dark; a sample interpolates between two neighbours.
_SKIN_TONES = np.array([
    [196, 214, 243], [170, 195, 232], [140, 172, 214], [112, 148, 196],
    [86, 120, 168], [62, 92, 136], [44, 66, 104], [32, 46, 72],
], np.float32)
# BGR iris base colours: browns, hazel, green, blue, grey, near black.
_IRIS_COLOURS = np.array([
    [30, 60, 110], [20, 45, 80], [40, 90, 130], [60, 120, 110], [70, 130, 90],
    [150, 120, 70], [170, 140, 100], [130, 130, 120], [25, 30, 40],
], np.float32)
_MIN_VISIBLE = 0.3  # a label is kept when at least this share of its disk / line is visible after occlusion
_SS = 4  # sub-pixel bits for cv2 drawing (anti-aliased, sub-pixel accurate shapes)


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy, np.float64) * (1 << _SS)).astype(np.int32).reshape(-1, 1, 2)


def _paint(canvas: np.ndarray, alpha: np.ndarray, mask: np.ndarray, colour: np.ndarray | float,
           opacity: float = 1.0) -> None:
    """Over-composite `colour` (BGR, or an H x W x 3 field) where `mask` (0..1) says, into canvas and its alpha."""
    m = (mask * opacity)[..., None]
    canvas *= 1.0 - m
    canvas += m * colour
    np.maximum(alpha, mask * opacity, out=alpha)


def _fill_mask(shape: tuple[int, int], poly: np.ndarray | None = None, circle: tuple | None = None,
               polyline: tuple | None = None) -> np.ndarray:
    """A float 0..1 mask of one anti-aliased shape: a filled polygon, a filled circle (cx, cy, r) or a polyline
    (points, thickness)."""
    m = np.zeros(shape, np.uint8)
    if poly is not None:
        cv2.fillPoly(m, [_pts(poly)], 255, cv2.LINE_AA, _SS)
    if circle is not None:
        cx, cy, r = circle
        c = tuple(int(v) for v in np.round(np.array([cx, cy]) * (1 << _SS)))
        cv2.circle(m, c, int(round(r * (1 << _SS))), 255, -1, cv2.LINE_AA, _SS)
    if polyline is not None:
        pts, thick = polyline
        cv2.polylines(m, [_pts(pts)], False, 255, max(1, int(round(thick))), cv2.LINE_AA, _SS)
    return m.astype(np.float32) / 255.0


def _lid_curves(cx: float, cy: float, w: float, up: float, lo: float, skew: float, n: int = 48):
    """Upper and lower eyelid curves of an almond opening: points (n, 2) each, corner to corner."""
    u = np.linspace(-1.0, 1.0, n)
    x = cx + u * w / 2
    bump = (1 - u ** 2) ** 0.8
    # skew moves the highest point of the upper lid towards one corner, as real lids do
    upper = cy - up * bump * (1 + skew * u)
    lower = cy + lo * bump * (1 - 0.5 * skew * u)
    return np.stack([x, upper], 1), np.stack([x, lower], 1)


def _lashes(rng: np.random.Generator, curve: np.ndarray, direction: float, length: float, count: int,
            thick: float, shape: tuple[int, int]) -> np.ndarray:
    """A mask of `count` curved lash strokes growing from `curve`, pointing up (direction -1) or down (+1)."""
    m = np.zeros(shape, np.uint8)
    n = len(curve)
    idx = np.sort(rng.integers(3, n - 3, count))
    cx = curve[:, 0].mean()
    half = max(1e-3, (curve[-1, 0] - curve[0, 0]) / 2)
    for i in idx:
        x0, y0 = curve[i]
        side = (x0 - cx) / half  # lashes fan out towards the corners
        ln = length * rng.uniform(0.6, 1.1) * (1 - 0.5 * abs(side))
        ang = direction * np.pi / 2 + side * 0.6 * -direction + rng.normal(0, 0.12)
        # a quadratic stroke, bending outward
        t = np.linspace(0, 1, 5)[:, None]
        d = np.array([np.cos(ang), np.sin(ang)]) * ln
        bend = np.array([side * 0.4 * ln, 0])
        pts = np.array([x0, y0]) + t * d + (t ** 2) * bend
        cv2.polylines(m, [_pts(pts)], False, 255, max(1, int(round(thick))), cv2.LINE_AA, _SS)
    return m.astype(np.float32) / 255.0


def _shade(base: np.ndarray, shape: tuple[int, int], cy: float, spread: float, strength: float) -> np.ndarray:
    """A colour field darker away from row cy (vertical shading of lids / sclera)."""
    ys = np.arange(shape[0], dtype=np.float32)[:, None, None]
    f = 1.0 - strength * np.clip(np.abs(ys - cy) / max(spread, 1e-3), 0, 1)
    return np.broadcast_to(base * f, (shape[0], shape[1], 3))


def _render_eye(rng: np.random.Generator, eye_w: float, skin: np.ndarray, open_eye: bool, params: dict) -> dict:
    """Paint one upright eye; returns colour, alpha and per-class masks in a square canvas centred on the eye."""
    side = int(np.ceil(eye_w * 1.9)) | 1
    shape = (side, side)
    c = side / 2.0
    canvas = np.zeros(shape + (3,), np.float32)
    alpha = np.zeros(shape, np.float32)
    masks = {}
    dark_skin = skin * params["lid_dark"]

    # eye-socket shading: a soft darker ellipse around the eye (drawn first, under everything)
    sock = np.zeros(shape, np.uint8)
    cv2.ellipse(sock, (int(c), int(c - eye_w * 0.05)), (int(eye_w * 0.62), int(eye_w * 0.42)), 0, 0, 360, 255, -1)
    sock = cv2.GaussianBlur(sock.astype(np.float32) / 255.0, (0, 0), eye_w * 0.12)
    _paint(canvas, alpha, sock, dark_skin, params["socket"])

    up, lo, skew = params["up"] * eye_w, params["lo"] * eye_w, params["skew"]
    if open_eye:
        upper, lower = _lid_curves(c, c, eye_w, up, lo, skew)
        opening = _fill_mask(shape, poly=np.concatenate([upper, lower[::-1]]))
        # crease above the upper lid
        crease = upper.copy()
        crease[:, 1] -= params["crease"] * eye_w
        crease = crease[6:-6]
        _paint(canvas, alpha, _fill_mask(shape, polyline=(crease, max(1.0, eye_w * 0.02))), dark_skin * 0.85, 0.55)
        # sclera: off-white, shaded towards the corners and under the upper lid
        xs = np.arange(side, dtype=np.float32)[None, :]
        ys = np.arange(side, dtype=np.float32)[:, None]
        corner = np.clip(np.abs(xs - c) / (eye_w / 2), 0, 1) ** 2
        top = np.clip((ys - (c - up)) / max(up + lo, 1), 0, 1)
        sclera = params["sclera"] * (0.95 - 0.35 * corner[..., None]) * (0.75 + 0.25 * top[..., None])
        _paint(canvas, alpha, opening, sclera)
        # pink caruncle at the inner corner
        inner = c - eye_w * 0.44 * params["inner_side"]
        car = _fill_mask(shape, circle=(inner, c + lo * 0.1, eye_w * 0.05)) * opening
        _paint(canvas, alpha, car, np.array([120, 120, 200], np.float32), 0.7)

        # iris and pupil: concentric disks, so the visible pupil always lies inside the visible iris
        ir = params["iris_r"] * eye_w
        icx = c + params["gaze_x"] * eye_w
        icy = c + params["gaze_y"] * eye_w
        iris_disk = _fill_mask(shape, circle=(icx, icy, ir))
        ang = np.arctan2(ys - icy, xs - icx)
        rad = np.sqrt((xs - icx) ** 2 + (ys - icy) ** 2) / max(ir, 1e-3)
        streak = sum(a * np.sin(k * ang + p) for a, k, p in params["streaks"])
        base = params["iris_col"][None, None, :]
        tex = 1.0 + 0.25 * streak[..., None] * np.clip(rad, 0.3, 1)[..., None]
        limbus = 1.0 - params["limbus"] * np.clip((rad[..., None] - 0.78) / 0.22, 0, 1)
        collar = 1.0 + 0.3 * np.exp(-((rad[..., None] - params["pupil_frac"] - 0.12) / 0.08) ** 2)
        iris_field = np.clip(base * tex * limbus * collar, 0, 255)
        _paint(canvas, alpha, iris_disk * opening, iris_field)
        pr = params["pupil_frac"] * ir
        pupil_disk = _fill_mask(shape, circle=(icx, icy, pr))
        _paint(canvas, alpha, pupil_disk * opening, np.full(3, params["pupil_v"], np.float32))
        # the upper lid casts a shadow over the top of the eyeball
        shadow = np.clip(1 - (ys - (c - up)) / max(0.5 * (up + lo), 1), 0, 1) * opening
        _paint(canvas, alpha, shadow, np.zeros(3, np.float32), params["lid_shadow"])
        # specular highlights (reflections of a light source), partly over the pupil
        for hx, hy, hr in params["highlights"]:
            hl = _fill_mask(shape, circle=(icx + hx * ir, icy + hy * ir, max(0.8, hr * ir))) * opening
            _paint(canvas, alpha, hl, np.full(3, 250, np.float32), 0.9)
        masks[IRIS] = iris_disk * opening
        masks[PUPIL] = pupil_disk * opening
        masks["iris_full"] = iris_disk
        masks["pupil_full"] = pupil_disk
        # lid margins and lashes
        margin_t = max(1.0, eye_w * params["margin"])
        _paint(canvas, alpha, _fill_mask(shape, polyline=(upper, margin_t)), dark_skin * 0.45, 0.9)
        _paint(canvas, alpha, _fill_mask(shape, polyline=(lower, margin_t * 0.6)), dark_skin * 0.8, 0.6)
        lash_col = np.full(3, params["lash_v"], np.float32)
        if params["lash_n"]:
            m = _lashes(rng, upper, -1, eye_w * params["lash_len"], params["lash_n"], margin_t * 0.7, shape)
            _paint(canvas, alpha, m, lash_col, 0.95)
            m = _lashes(rng, lower, 1, eye_w * params["lash_len"] * 0.4, params["lash_n"] // 3, margin_t * 0.45,
                        shape)
            _paint(canvas, alpha, m, lash_col, 0.7)
    else:
        # closed: the upper lid comes down over the eyeball; its margin sags into a downward arc
        sag = params["shut_sag"] * eye_w
        upper, lower = _lid_curves(c, c, eye_w, up * 0.35, sag, skew)
        bulge = np.concatenate([upper, lower[::-1]])
        lid = _fill_mask(shape, poly=bulge)
        _paint(canvas, alpha, lid, _shade(skin * 1.04, shape, c - up * 0.3, eye_w * 0.3, 0.12), 0.9)
        crease = upper.copy()
        crease[:, 1] -= params["crease"] * eye_w * 0.8
        crease = crease[6:-6]
        _paint(canvas, alpha, _fill_mask(shape, polyline=(crease, max(1.0, eye_w * 0.02))), dark_skin * 0.85, 0.5)
        margin_t = max(1.0, eye_w * params["margin"] * 1.2)
        line = _fill_mask(shape, polyline=(lower, margin_t))
        _paint(canvas, alpha, line, dark_skin * 0.35, 0.95)
        lash = np.zeros(shape, np.float32)
        if params["lash_n"]:
            lash = _lashes(rng, lower, 1, eye_w * params["lash_len"] * 0.8, params["lash_n"], margin_t * 0.7, shape)
            _paint(canvas, alpha, lash, np.full(3, params["lash_v"], np.float32), 0.95)
        # the shut-eye box spans the lid margin with its lashes and the lid bulge just above it
        band = _fill_mask(shape, poly=np.concatenate([lower - [0, up * 0.2], lower[::-1] + [0, margin_t * 0.5]]))
        masks[SHUT] = np.maximum(np.maximum(line, lash), band)
    return {"canvas": canvas, "alpha": alpha, "masks": masks, "side": side}


def _eye_params(rng: np.random.Generator) -> dict:
    """Per-person eye appearance, shared by both eyes of a face."""
    iris_r = rng.uniform(0.17, 0.25)
    up = rng.uniform(0.14, 0.24)
    lo = rng.uniform(0.09, 0.17)
    nstreak = int(rng.integers(2, 5))
    return {
        "up": up, "lo": lo, "skew": rng.uniform(-0.25, 0.25), "crease": rng.uniform(0.08, 0.2),
        "iris_r": iris_r, "gaze_x": rng.uniform(-0.18, 0.18), "gaze_y": rng.uniform(-0.06, 0.06),
        "pupil_frac": rng.uniform(0.28, 0.55), "pupil_v": rng.uniform(5, 35),
        "iris_col": _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.7, 1.25, 3).astype(np.float32),
        "streaks": [(rng.uniform(0.1, 0.5), int(rng.integers(12, 60)), rng.uniform(0, 6.3)) for _ in range(nstreak)],
        "limbus": rng.uniform(0.2, 0.7),
        "sclera": np.array([rng.uniform(205, 245), rng.uniform(205, 245), rng.uniform(215, 250)], np.float32),
        "lid_shadow": rng.uniform(0.1, 0.45), "lid_dark": rng.uniform(0.55, 0.85), "socket": rng.uniform(0.1, 0.45),
        "margin": rng.uniform(0.015, 0.04), "lash_n": int(rng.integers(0, 40)), "lash_len": rng.uniform(0.08, 0.22),
        "lash_v": rng.uniform(5, 45),
        "highlights": [(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.3), rng.uniform(0.06, 0.2))
                       for _ in range(int(rng.integers(0, 3)))],
        "shut_sag": rng.uniform(0.04, 0.12), "inner_side": 1.0,
    }


def _low_freq_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((max(2, cells), max(2, cells))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Clutter: a colour gradient, low-frequency texture, then random shapes, lines and stripes."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    grad = t[None, :, None] if t.size == w else t[:, None, None]
    img = np.broadcast_to(c0 * (1 - grad) + c1 * grad, (h, w, 3)).astype(np.float32).copy()
    img += (_low_freq_noise(rng, h, w, int(rng.integers(3, 12)))[..., None] - 0.5) * rng.uniform(0, 120)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 25))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 5)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(max(3, min(h, w) // 40), max(4, min(h, w) // 3)))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), col, -1 if rng.random() < 0.7 else 2)
        elif kind == 1:  # circles, some dark: hard negatives for pupils
            cv2.circle(img, (x, y), max(2, s // 2), col, -1 if rng.random() < 0.7 else 2, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), col, int(rng.integers(1, 6)),
                     cv2.LINE_AA)
        elif kind == 3:
            cv2.ellipse(img, (x, y), (s // 2 + 1, max(1, int(s * rng.uniform(0.1, 0.5)))),
                        float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
        else:
            pts = rng.integers(-s, s, (int(rng.integers(3, 7)), 2)) + np.array([x, y])
            cv2.fillPoly(img, [pts.astype(np.int32)], col, cv2.LINE_AA)
    if rng.random() < 0.3:  # stripes / fabric-like texture
        period = rng.uniform(4, 30)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        s = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
        img = np.clip(img.astype(np.float32) + s[..., None] * rng.uniform(10, 50), 0, 255).astype(np.uint8)
    return img.astype(np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    i = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(np.floor(i))
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    base = _SKIN_TONES[lo] * (1 - (i - lo)) + _SKIN_TONES[hi] * (i - lo)
    return (base * rng.uniform(0.92, 1.08, 3)).astype(np.float32)


def _place_face(rng: np.random.Generator, img: np.ndarray, skin: np.ndarray, centre: np.ndarray, span: float,
                angle: float) -> None:
    """Paint a skin region (a face-like ellipse or a soft blob) with mottled texture around the eyes."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    ax = (int(span * rng.uniform(0.65, 1.2)), int(span * rng.uniform(0.5, 1.1)))
    off = centre + np.array([rng.uniform(-0.1, 0.1) * span, rng.uniform(0.0, 0.35) * span])
    cv2.ellipse(mask, tuple(int(v) for v in off), ax, angle, 0, 360, 255, -1, cv2.LINE_AA)
    m = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), max(1.0, span * rng.uniform(0.02, 0.12)))
    tex = 1.0 + (_low_freq_noise(rng, h, w, int(rng.integers(4, 20))) - 0.5) * rng.uniform(0.05, 0.25)
    field = skin[None, None, :] * tex[..., None]
    img *= 1 - m[..., None]
    img += m[..., None] * field


def _eyebrow(rng: np.random.Generator, img: np.ndarray, cx: float, cy: float, eye_w: float, angle: float,
             colour: np.ndarray) -> None:
    """A dark arc of short hair strokes above an eye."""
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.uint8)
    u = np.linspace(-1, 1, 24)
    lift = eye_w * rng.uniform(0.45, 0.8)
    xs = u * eye_w * rng.uniform(0.55, 0.75)
    ys = -lift - eye_w * 0.12 * (1 - u ** 2)
    rot = np.deg2rad(angle)
    ca, sa = np.cos(rot), np.sin(rot)
    px = cx + xs * ca - ys * sa
    py = cy + xs * sa + ys * ca
    cv2.polylines(m, [_pts(np.stack([px, py], 1))], False, 255, max(2, int(eye_w * rng.uniform(0.06, 0.14))),
                  cv2.LINE_AA, _SS)
    mf = cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), max(0.6, eye_w * 0.015))
    op = rng.uniform(0.4, 0.9)
    img *= 1 - (mf * op)[..., None]
    img += (mf * op)[..., None] * colour


def _composite_eye(img: np.ndarray, eye: dict, cx: float, cy: float, angle: float, flip: bool,
                   label_layers: dict) -> None:
    """Rotate the eye canvas about its centre, place it at (cx, cy) and over-composite it; warp its masks too."""
    side = eye["side"]
    h, w = img.shape[:2]
    mat = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), -angle, 1.0)
    if flip:  # the other eye of a face is the mirror image (inner corner on the other side)
        mat = mat @ np.array([[-1, 0, side], [0, 1, 0], [0, 0, 1]], np.float64)
    mat[:, 2] += [cx - side / 2.0, cy - side / 2.0]
    flags = cv2.INTER_LINEAR
    canvas = cv2.warpAffine(eye["canvas"] * eye["alpha"][..., None], mat, (w, h), flags=flags)
    alpha = cv2.warpAffine(eye["alpha"], mat, (w, h), flags=flags)
    img *= 1 - alpha[..., None]
    img += canvas
    for key, m in eye["masks"].items():
        label_layers.setdefault(key, []).append(cv2.warpAffine(m, mat, (w, h), flags=flags))


def _mask_box(m: np.ndarray, thr: float = 0.5) -> np.ndarray | None:
    ys, xs = np.nonzero(m >= thr)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _labels(layers: dict) -> tuple[np.ndarray, np.ndarray]:
    boxes, classes = [], []
    for k in range(len(layers.get(IRIS, []))):
        iris, pupil = layers[IRIS][k], layers[PUPIL][k]
        iris_full, pupil_full = layers["iris_full"][k], layers["pupil_full"][k]
        ib = _mask_box(iris)
        if ib is None or iris.sum() < _MIN_VISIBLE * iris_full.sum() or (ib[2:] - ib[:2]).min() < 3:
            continue
        boxes.append(ib)
        classes.append(IRIS)
        pb = _mask_box(pupil)
        if pb is not None and pupil.sum() >= _MIN_VISIBLE * pupil_full.sum() and (pb[2:] - pb[:2]).min() >= 2:
            # a pupil's visible pixels are a subset of the iris's; clamp away interpolation slivers
            pb[:2] = np.maximum(pb[:2], ib[:2])
            pb[2:] = np.minimum(pb[2:], ib[2:])
            boxes.append(pb)
            classes.append(PUPIL)
    for m in layers.get(SHUT, []):
        sb = _mask_box(m)
        if sb is not None and (sb[2:] - sb[:2]).min() >= 2:
            boxes.append(sb)
            classes.append(SHUT)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return np.stack(boxes).astype(np.float32), np.array(classes, np.int64)


def _size(size: SizeArg) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if w < 64 or h < 64:
        raise ConfigError("size", size, "an int or (width, height) of at least 64 pixels")
    return int(w), int(h)


def generate_sample(rng: np.random.Generator, size: SizeArg = 416) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image: (image BGR uint8 [H, W, 3], boxes float32 [N, 4] xyxy in pixels, classes int64 [N]).

    size: an int (square) or (width, height). Classes: 0 iris, 1 pupil, 2 shut-eye. One or two eyes, open or shut.
    """
    w, h = _size(size)
    img = _background(rng, h, w)
    two = rng.random() < 0.65
    ref = min(w, h * 1.25)
    eye_w = ref * (rng.uniform(0.13, 0.3) if two else rng.uniform(0.2, 0.55))
    gap = eye_w * rng.uniform(1.5, 2.2) if two else 0.0  # centre-to-centre distance
    angle = float(rng.normal(0, 12)) if rng.random() < 0.85 else float(rng.uniform(-60, 60))
    rot = np.deg2rad(angle)
    half_span = np.array([abs(np.cos(rot)) * gap / 2 + eye_w * 0.6, abs(np.sin(rot)) * gap / 2 + eye_w * 0.45])
    lo_c = half_span + 2
    hi_c = np.array([w, h]) - half_span - 2
    if np.any(hi_c <= lo_c):  # too big for this frame: shrink everything
        k = 0.9 * min(w / (2 * half_span[0] + 4), h / (2 * half_span[1] + 4))
        eye_w, gap, half_span = eye_w * k, gap * k, half_span * k
        lo_c, hi_c = half_span + 2, np.array([w, h]) - half_span - 2
    centre = rng.uniform(lo_c, hi_c)
    skin = _skin_colour(rng)
    face_on = rng.random() < 0.9
    if face_on:
        _place_face(rng, img, skin, centre, max(gap, eye_w) * rng.uniform(1.3, 2.0), angle)
    params = _eye_params(rng)
    state = rng.random()
    if two:
        offs = [-1.0, 1.0]
        # mostly both open or both shut; sometimes a wink
        wink = rng.random() < 0.15
        opens = [True, False][:: 1 if rng.random() < 0.5 else -1] if wink else [state < 0.62] * 2
    else:
        offs = [0.0]
        opens = [state < 0.6]
    layers: dict = {}
    brow_col = np.full(3, rng.uniform(10, 70), np.float32)
    brows = face_on and rng.random() < 0.6
    for off, is_open in zip(offs, opens):
        ex = centre[0] + off * gap / 2 * np.cos(rot)
        ey = centre[1] + off * gap / 2 * np.sin(rot)
        eye = _render_eye(rng, eye_w * rng.uniform(0.95, 1.05), skin, is_open, params)
        # the left eye in the image has its inner corner on the right: mirror the canvas (a lone eye: either side)
        flip = off < 0 if two else bool(rng.random() < 0.5)
        _composite_eye(img, eye, ex, ey, angle, flip=flip, label_layers=layers)
        if brows:
            _eyebrow(rng, img, ex, ey, eye_w, angle, brow_col)
    img = _photometric(rng, img)
    boxes, classes = _labels(layers)
    return img, boxes, classes


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting gradient, colour cast, blur, sensor noise and sometimes JPEG artefacts."""
    h, w = img.shape[:2]
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.9, 1.1, 3)
    img = img * light[..., None] * gain + rng.uniform(-20, 20)
    r = rng.random()
    if r < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.8))
    elif r < 0.5:  # motion blur
        k = int(rng.integers(3, 9))
        ker = np.zeros((k, k), np.float32)
        ker[k // 2, :] = 1.0 / k
        m = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        ker = cv2.warpAffine(ker, m, (k, k))
        img = cv2.filter2D(img, -1, ker / max(ker.sum(), 1e-6))
    img = img + rng.normal(0, rng.uniform(0, 10), img.shape).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        out = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    return out


def write_dataset(folder: str | Path, n: int, seed: int, size: SizeArg = (640, 480)) -> Path:
    """Write n images (PNG) + labels.json + dataset.txt (one image path per line, relative, for calibration).

    labels.json: {"classes": [...], "seed": s, "images": [{"file", "width", "height", "boxes" (xyxy), "classes"}]}.
    Image i is drawn from default_rng([seed, i]), so any subset can be regenerated alone. Returns the folder.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DatasetError(f"write_dataset: n={n!r} is not valid; give the number of images to write (>= 1)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    w, h = _size(size)
    records = []
    for i in progress_bar(range(int(n)), desc="synthetic eyes", unit="img", enabled=n >= 50):
        img, boxes, classes = sample_at(seed, i, (w, h))
        name = f"eye_{i:05d}.png"
        ok, enc = cv2.imencode(".png", img)
        if not ok:
            raise DatasetError(f"write_dataset: could not encode image {i}; check OpenCV's PNG support")
        write_bytes_atomic(out / name, enc.tobytes())
        records.append({"file": name, "width": w, "height": h, "boxes": np.round(boxes, 2).tolist(),
                        "classes": classes.tolist()})
    meta = {"classes": list(CLASS_NAMES), "seed": int(seed), "images": records}
    write_bytes_atomic(out / "labels.json", json.dumps(meta, indent=1).encode())
    write_bytes_atomic(out / "dataset.txt", "".join(r["file"] + "\n" for r in records).encode())
    log.info("wrote %d synthetic eye images to %s", n, out)
    return out


def sample_at(seed: int, index: int, size: SizeArg = 416) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index-th sample of the stream `seed` (independent of any other index)."""
    return generate_sample(np.random.default_rng([int(seed), int(index)]), size)


def read_dataset(folder: str | Path) -> tuple[list[Path], list[np.ndarray], list[np.ndarray]]:
    """Read a folder written by write_dataset: (image paths, boxes per image, classes per image)."""
    root = Path(folder)
    meta_path = root / "labels.json"
    if not meta_path.is_file():
        raise DatasetError(f"read_dataset: {meta_path} does not exist; write the set with write_dataset first")
    meta = json.loads(meta_path.read_text())
    paths, boxes, classes = [], [], []
    for rec in meta["images"]:
        paths.append(root / rec["file"])
        boxes.append(np.asarray(rec["boxes"], np.float32).reshape(-1, 4))
        classes.append(np.asarray(rec["classes"], np.int64).reshape(-1))
    return paths, boxes, classes
