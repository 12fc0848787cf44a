"""YOLOX detector (nano/tiny/s/m/l/x) whose state-dict keys match the yolox-pytorch training code.

Users of the seed workflow hold `.pth` files saved by `YoloBody(num_classes, phi)` from that code base, so the
module tree here (attribute names, registration order, layer shapes) is part of the file format: renaming an
attribute breaks every existing checkpoint. The forward returns the three raw per-level maps
[1, 4 + 1 + nc, H/s, W/s] for strides 8, 16, 32 (box regression, objectness logit, class logits), as the seed deploys.
"""

from __future__ import annotations

import torch
from torch import nn

from openrknn.errors import ConfigError

# (depth multiplier, width multiplier) per phi, as in the reference training code.
PHI_MULTIPLIERS: dict[str, tuple[float, float]] = {
    "nano": (0.33, 0.25),
    "tiny": (0.33, 0.375),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}
ACTIVATIONS = ("silu", "relu", "lrelu")
STRIDES = (8, 16, 32)
# PAFPN channels at width 1.0 for the stride 8 / 16 / 32 levels.
_FPN_CHANNELS = (256, 512, 1024)


def check_phi(phi: str) -> None:
    if phi not in PHI_MULTIPLIERS:
        raise ConfigError("phi", phi, list(PHI_MULTIPLIERS), "pick the phi the .pth was trained with")


def default_depthwise(phi: str) -> bool:
    """nano is the only depthwise variant of the reference code."""
    return phi == "nano"


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu":  # the NPU-friendly choice: fuses into the conv and quantizes without SiLU's curve
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ConfigError("act", name, ACTIVATIONS)


class BaseConv(nn.Module):
    """Conv (no bias) + BatchNorm + activation; 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, groups: int = 1, act: str = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        # eps/momentum from the reference: running stats in its checkpoints were accumulated with these.
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise kxk conv followed by a pointwise 1x1 conv, each with BN + activation."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, act: str = "silu"):
        super().__init__()
        self.dconv = BaseConv(cin, cin, ksize, stride, groups=cin, act=act)
        self.pconv = BaseConv(cin, cout, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def _conv(cin: int, cout: int, ksize: int, stride: int, depthwise: bool, act: str) -> nn.Module:
    return DWConv(cin, cout, ksize, stride, act) if depthwise else BaseConv(cin, cout, ksize, stride, act=act)


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels -> 4x channels) then a 3x3 conv."""

    def __init__(self, cin: int, cout: int, ksize: int = 3, act: str = "silu"):
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, ksize, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channel-block order (tl, bl, tr, br) is what trained stem weights expect.
        top_left = x[..., ::2, ::2]
        top_right = x[..., ::2, 1::2]
        bot_left = x[..., 1::2, ::2]
        bot_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bot_left, top_right, bot_right), dim=1))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, shortcut: bool, depthwise: bool, act: str):
        super().__init__()
        self.conv1 = BaseConv(cin, cout, 1, 1, act=act)
        self.conv2 = _conv(cout, cout, 3, 1, depthwise, act)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class SPPBottleneck(nn.Module):
    """1x1 reduce, max-pools 5/9/13 (stride 1) concatenated with the input, 1x1 expand."""

    def __init__(self, cin: int, cout: int, act: str, kernels: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1, 1, act=act)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernels])
        self.conv2 = BaseConv(hidden * (len(kernels) + 1), cout, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class CSPLayer(nn.Module):
    """Cross-stage partial block: half the channels through n bottlenecks, half straight, then merged."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool, depthwise: bool, act: str):
        super().__init__()
        hidden = cout // 2
        self.conv1 = BaseConv(cin, hidden, 1, 1, act=act)
        self.conv2 = BaseConv(cin, hidden, 1, 1, act=act)
        self.conv3 = BaseConv(2 * hidden, cout, 1, 1, act=act)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, depthwise, act) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class CSPDarknet(nn.Module):
    """Backbone; returns the stride 8, 16, 32 feature maps (dark3, dark4, dark5)."""

    def __init__(self, depth: float, width: float, depthwise: bool, act: str):
        super().__init__()
        c = int(width * 64)
        n = max(round(depth * 3), 1)
        self.stem = Focus(3, c, 3, act)
        self.dark2 = self._stage(c, c * 2, n, depthwise, act)
        self.dark3 = self._stage(c * 2, c * 4, n * 3, depthwise, act)
        self.dark4 = self._stage(c * 4, c * 8, n * 3, depthwise, act)
        self.dark5 = nn.Sequential(
            _conv(c * 8, c * 16, 3, 2, depthwise, act),
            SPPBottleneck(c * 16, c * 16, act),
            CSPLayer(c * 16, c * 16, n, False, depthwise, act),
        )

    @staticmethod
    def _stage(cin: int, cout: int, n: int, depthwise: bool, act: str) -> nn.Sequential:
        return nn.Sequential(_conv(cin, cout, 3, 2, depthwise, act), CSPLayer(cout, cout, n, True, depthwise, act))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        c3 = self.dark3(x)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        return c3, c4, c5


class YOLOPAFPN(nn.Module):
    """Backbone + path-aggregation neck (top-down with nearest upsampling, then bottom-up)."""

    def __init__(self, depth: float, width: float, depthwise: bool, act: str):
        super().__init__()
        c3, c4, c5 = (int(ch * width) for ch in _FPN_CHANNELS)
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width, depthwise, act)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1, act=act)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise, act)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1, act=act)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise, act)
        self.bu_conv2 = _conv(c3, c3, 3, 2, depthwise, act)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise, act)
        self.bu_conv1 = _conv(c4, c4, 3, 2, depthwise, act)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise, act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f3, f4, f5 = self.backbone(x)
        p5 = self.lateral_conv0(f5)
        p4 = self.C3_p4(torch.cat((self.upsample(p5), f4), dim=1))
        p4 = self.reduce_conv1(p4)
        out3 = self.C3_p3(torch.cat((self.upsample(p4), f3), dim=1))
        out4 = self.C3_n3(torch.cat((self.bu_conv2(out3), p4), dim=1))
        out5 = self.C3_n4(torch.cat((self.bu_conv1(out4), p5), dim=1))
        return out3, out4, out5


class YOLOXHead(nn.Module):
    """Decoupled head: per level a 1x1 stem, then separate cls and reg branches of two 3x3 convs."""

    def __init__(self, num_classes: int, width: float, depthwise: bool, act: str):
        super().__init__()
        hidden = int(256 * width)
        # Registration order of these lists fixes the state-dict key order of the reference.
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        self.stems = nn.ModuleList()
        for ch in _FPN_CHANNELS:
            self.stems.append(BaseConv(int(ch * width), hidden, 1, 1, act=act))
            self.cls_convs.append(self._branch(hidden, depthwise, act))
            self.reg_convs.append(self._branch(hidden, depthwise, act))
            self.cls_preds.append(nn.Conv2d(hidden, num_classes, 1))
            self.reg_preds.append(nn.Conv2d(hidden, 4, 1))
            self.obj_preds.append(nn.Conv2d(hidden, 1, 1))

    @staticmethod
    def _branch(ch: int, depthwise: bool, act: str) -> nn.Sequential:
        return nn.Sequential(_conv(ch, ch, 3, 1, depthwise, act), _conv(ch, ch, 3, 1, depthwise, act))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = []
        for k, x in enumerate(feats):
            x = self.stems[k](x)
            cls = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            outs.append(torch.cat((self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat), cls), dim=1))
        return outs[0], outs[1], outs[2]


class YoloBody(nn.Module):
    """YOLOX model: `YoloBody(num_classes, phi)` as in the yolox-pytorch training code.

    depthwise=None follows the reference (True for nano only); act='relu' swaps every SiLU for ReLU with the
    same state-dict keys, so a SiLU-trained file still loads (fine-tune before trusting its accuracy).
    """

    def __init__(self, num_classes: int, phi: str, depthwise: bool | None = None, act: str = "silu"):
        super().__init__()
        check_phi(phi)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ConfigError("num_classes", num_classes, "an integer >= 1")
        _activation(act)  # validate once, with a clear error, before building hundreds of layers
        depth, width = PHI_MULTIPLIERS[phi]
        dw = default_depthwise(phi) if depthwise is None else bool(depthwise)
        self.phi, self.num_classes, self.depthwise, self.act = phi, num_classes, dw, act
        self.backbone = YOLOPAFPN(depth, width, dw, act)
        self.head = YOLOXHead(num_classes, width, dw, act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))
