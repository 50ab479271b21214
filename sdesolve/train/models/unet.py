"""A small U-Net in the DDPM++ style (Ho et al. 2020; Song et al. 2021, score_sde's DDPM++).

    label -> sinusoidal embedding -> Linear -> SiLU -> Linear           (time embedding, 4 ch)
    x -> conv3x3 -> [level 0] -> down -> [level 1] -> ... -> [level L-1]
      -> middle: ResBlock, SelfAttention, ResBlock
      -> [level L-1] -> up -> ... -> [level 0] -> GroupNorm, SiLU, conv3x3 -> output

Each encoder level has ``blocks`` residual blocks at ``ch * mult[i]`` channels; each decoder
level has ``blocks + 1`` taking the encoder's skip connections (concatenated). A residual block
is GroupNorm -> SiLU -> conv3x3 -> (+ time projection) -> GroupNorm -> SiLU -> dropout -> conv3x3,
added to a (1x1-projected) shortcut and scaled by 1/sqrt(2) (DDPM++'s skip_rescale). Self-
attention (one head, GroupNorm, 1x1 q/k/v, residual, also scaled by 1/sqrt(2)) follows every
residual block at the resolutions listed in ``attn``. Downsampling is a stride-2 conv3x3,
upsampling nearest-neighbour x2 then conv3x3. The last conv of every branch starts at zero, so
every block starts as the identity and the network starts at output 0.

Sizes: the input side must be divisible by 2^(levels - 1). For 8x8 digits, ``mult=(1, 2, 2)``
gives resolutions 8 -> 4 -> 2; ``attn=(2,)`` attends at 2x2. Called as ``model(x, label)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .embedding import SinusoidalEmbedding

__all__ = ["UNet"]


def _groups(ch: int) -> int:
    """GroupNorm groups: the largest divisor of ch not above min(32, ch // 4), at least 1."""
    g = max(1, min(32, ch // 4))
    while ch % g:
        g -= 1
    return g


def _zero(m: nn.Module) -> nn.Module:
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return (self.skip(x) + h) / math.sqrt(2.0)


class SelfAttention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hgt * wid).unbind(1)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        h = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hgt, wid)
        return (x + self.proj(h)) / math.sqrt(2.0)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, ch: int = 64, mult=(1, 2, 2), blocks: int = 2,
                 attn=(4,), resolution: int = 8, dropout: float = 0.0, max_freq: float = 100.0,
                 out_channels: int | None = None):
        super().__init__()
        mult, attn = tuple(int(m) for m in mult), tuple(int(a) for a in attn)
        if resolution % 2 ** (len(mult) - 1):
            raise ValueError(f"UNet: resolution {resolution} is not divisible by 2^{len(mult) - 1} "
                             f"for {len(mult)} levels (mult={mult})")
        out_channels = out_channels or in_channels
        self.config = dict(in_channels=in_channels, ch=ch, mult=list(mult), blocks=blocks, attn=list(attn),
                           resolution=resolution, dropout=dropout, max_freq=max_freq, out_channels=out_channels)
        self.resolution, self.in_channels = resolution, in_channels
        emb = 4 * ch
        self.embed = SinusoidalEmbedding(ch, max_freq)
        self.temb = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down, skips, c, res = nn.ModuleList(), [ch], ch, resolution
        for i, m in enumerate(mult):
            for _ in range(blocks):
                self.down.append(ResBlock(c, ch * m, emb, dropout))
                c = ch * m
                if res in attn:
                    self.down.append(SelfAttention(c))
                skips.append(c)
            if i < len(mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                res //= 2
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, dropout), SelfAttention(c), ResBlock(c, c, emb, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), ch * m, emb, dropout))
                c = ch * m
                if res in attn:
                    self.up.append(SelfAttention(c))
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = _zero(nn.Conv2d(c, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] % 2 ** (len(self.config["mult"]) - 1):
            raise ValueError(f"UNet built for (B, {self.in_channels}, H, W) with H, W divisible by "
                             f"{2 ** (len(self.config['mult']) - 1)}, got {tuple(x.shape)}")
        e = self.temb(self.embed(label))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
            if not isinstance(layer, SelfAttention):
                hs.append(h)
        for layer in self.mid:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), e)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
