"""Architecture blocks with generated weights, written as torch users write them (bench/torch_exports.py's "blocks"
row): ConvNeXt (channel-last LayerNorm, GELU, layer scale), Swin (shifted windows, relative position bias), a
deformable sampling step (grid_sample), EfficientNet's MBConv (SiLU, squeeze-excite), MobileNetV3 (HardSwish), a
U-Net, a DeepLab head (dilation, a pooled branch), a YOLOv8 DFL head, a PixelShuffle super-resolution net and a CRNN
with attention (GRU, nn.MultiheadAttention). Random weights exercise the exporters and loaders, not accuracy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNeXt(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Swin(nn.Module):
    def __init__(self, c: int = 32, win: int = 4, heads: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.win, self.heads = win, heads
        self.norm = nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.bias_table = nn.Parameter(torch.randn((2 * win - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + win - 1
        self.register_buffer("index", rel[..., 0] * (2 * win - 1) + rel[..., 1])

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        s = self.win
        y = torch.roll(self.norm(x), (-s // 2, -s // 2), (1, 2))
        y = y.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        q, k, v = self.qkv(y).reshape(-1, s * s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        scores = scores + self.bias_table[self.index].permute(2, 0, 1)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, s * s, c)
        y = self.proj(y).view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return (x + torch.roll(y, (s // 2, s // 2), (1, 2))).permute(0, 3, 1, 2)


class DeformSample(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.offsets = nn.Conv2d(3, c, 3, 2, 1), nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        f = self.stem(x)
        grid = torch.tanh(self.offsets(f)).permute(0, 2, 3, 1)
        return F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MBConv(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.expand = nn.Conv2d(3, c, 3, 2, 1), nn.Conv2d(c, 4 * c, 1)
        self.dw = nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c)
        self.se1, self.se2 = nn.Conv2d(4 * c, c // 2, 1), nn.Conv2d(c // 2, 4 * c, 1)
        self.project, self.bn = nn.Conv2d(4 * c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        x = self.stem(x)
        y = F.silu(self.dw(F.silu(self.expand(x))))
        y = y * torch.sigmoid(self.se2(F.silu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return x + self.bn(self.project(y))


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.dw = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = F.hardswish(self.conv(x))
        y = y * F.hardsigmoid(self.dw(y).mean((2, 3), keepdim=True))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1, self.down2 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)
        self.up, self.out = nn.ConvTranspose2d(32, 16, 2, 2), nn.Conv2d(32, 1, 1)

    def forward(self, x):
        a = F.relu(self.down1(x))
        return torch.sigmoid(self.out(torch.cat([a, self.up(F.relu(self.down2(a)))], 1)))


class DeepLabHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 4, 1)
        self.atrous, self.pooled = nn.Conv2d(16, 8, 3, padding=6, dilation=6), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        f = F.relu(self.conv(x))
        g = F.interpolate(self.pooled(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:], mode="bilinear",
                          align_corners=False)
        return F.interpolate(torch.cat([self.atrous(f), g], 1), size=x.shape[-2:], mode="bilinear",
                             align_corners=True)


class YoloDFL(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64 + 8, 3, 8, 1)
        self.register_buffer("bins", torch.arange(16, dtype=torch.float32))

    def forward(self, x):
        box, cls = self.conv(x).flatten(2).split([64, 8], 1)
        sides = box.view(1, 4, 16, -1).softmax(2).transpose(2, 3) @ self.bins
        return torch.cat([sides.transpose(1, 2), cls.sigmoid().transpose(1, 2)], 2)


class PixelShuffleSR(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 12, 3, padding=1)
        self.slope = nn.Parameter(torch.full((16,), 0.2))

    def forward(self, x):
        y = F.pixel_shuffle(self.conv2(F.prelu(self.conv1(x), self.slope)), 2)
        return y + F.interpolate(x, scale_factor=2, mode="nearest")


class CRNNAttention(nn.Module):
    """Input 3 x 32 x 128: a column per 4 pixels, a bidirectional GRU, self-attention, per-step classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, (32, 4), (32, 4))
        self.rnn = nn.GRU(32, 32, batch_first=True, bidirectional=True)
        self.attention, self.fc = nn.MultiheadAttention(64, 4, batch_first=True), nn.Linear(64, 20)

    def forward(self, x):
        h = self.rnn(self.conv(x).squeeze(2).transpose(1, 2))[0]
        return self.fc(self.attention(h, h, h, need_weights=False)[0]).log_softmax(-1)


# name -> (module, input height x width)
BLOCKS = {"ConvNeXt block": (ConvNeXt, (64, 64)), "Swin block": (Swin, (64, 64)),
          "deformable sampling": (DeformSample, (64, 64)), "MBConv": (MBConv, (64, 64)),
          "MobileNetV3 block": (MobileNetV3, (64, 64)), "U-Net": (UNet, (64, 64)),
          "DeepLab head": (DeepLabHead, (64, 64)), "YOLOv8 DFL head": (YoloDFL, (64, 64)),
          "PixelShuffle SR": (PixelShuffleSR, (64, 64)), "CRNN + attention": (CRNNAttention, (32, 128))}
