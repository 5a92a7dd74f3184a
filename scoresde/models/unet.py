"""A small convolutional U-Net backbone for images ``[B, C, H, W]``: ``UNet(x_in, c_noise[, labels])``.

A backbone in the sense of ``scoresde.models.precond``: no preconditioning of its own; wrap it in
``Preconditioned(sde, (C, H, W), backbone=partial(UNet, channels=32))``.  The layout follows DDPM's
U-Net (Ho et al. 2020, after PixelCNN++) at toy scale, without attention:

    emb = Lin(SiLU(Lin(fourier(c_noise))))  (+ label embedding)
    h = Conv3x3(x)
    down, level i = 0..L-1:  num_res_blocks x ResBlock(ch_i), keep h; Conv3x3 stride 2 (not at the last level)
    middle: ResBlock
    up, level i = L-1..0:    concat the kept h; ResBlock(ch_i); nearest x2 + Conv3x3 (not at level 0)
    out = Conv3x3(SiLU(GroupNorm(h)))   (initialised to zero, so F = 0 at the start)

    ResBlock(h) = skip(h) + Conv3x3(SiLU(GN(Conv3x3(SiLU(GN(h))) + Lin(emb))))

with ch_i = channels * channel_mult[i]; H and W must be divisible by 2^(L-1).  Weights are
initialised from ``generator`` (PyTorch's default scheme, drawn from it); torch's global RNG is
left untouched.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_generator, check_int
from .mlp import GaussianFourierEmbedding

__all__ = ["UNet"]


def _groups(ch: int) -> int:
    return math.gcd(8, ch)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        out = self.conv2(nn.functional.silu(self.norm2(out)))
        return self.skip(h) + out


class UNet(nn.Module):
    """Convolutional U-Net ``x [B, C, H, W], c_noise [B] (, labels [B]) -> [B, C, H, W]`` (module docstring).

    Args:
        event_shape: ``(C, H, W)``.
        channels: base width; ``channel_mult``: width multiplier per level (L = its length).
        num_res_blocks: residual blocks per level on the way down.
        embedding_dim: Fourier embedding size of c_noise; ``fourier_scale`` its frequency std.
        num_classes: C > 0 adds a label embedding of C + 1 rows (row C: the null label, for ``labels=None``).
        generator: initialises weights and Fourier frequencies.
    """

    def __init__(self, event_shape: tuple[int, ...] = (1, 16, 16), *, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), num_res_blocks: int = 1, embedding_dim: int = 64,
                 fourier_scale: float = 4.0, num_classes: int = 0, generator: torch.Generator | None = None):
        super().__init__()
        event_shape = tuple(event_shape)
        if len(event_shape) != 3 or any(not isinstance(s, int) or s < 1 for s in event_shape):
            raise ValueError(f"`event_shape` must be (C, H, W) of positive ints, got {event_shape!r}")
        check_int("channels", channels)
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"`channel_mult` must be a non-empty tuple of positive ints, got {channel_mult!r}")
        check_int("num_res_blocks", num_res_blocks)
        check_int("num_classes", num_classes, minimum=0)
        factor = 2 ** (len(channel_mult) - 1)
        if event_shape[1] % factor or event_shape[2] % factor:
            raise ValueError(f"H and W of `event_shape` {event_shape} must be divisible by 2^(levels-1) = {factor}")
        generator = check_generator(generator)
        self.event_shape, self.num_classes = event_shape, num_classes
        self._config = dict(event_shape=list(event_shape), channels=channels, channel_mult=list(channel_mult),
                            num_res_blocks=num_res_blocks, embedding_dim=embedding_dim,
                            fourier_scale=fourier_scale, num_classes=num_classes)
        c_img = event_shape[0]
        emb_dim = 2 * channels
        self.embed = GaussianFourierEmbedding(embedding_dim, fourier_scale, generator)
        with torch.random.fork_rng(devices=[]):  # default initialisers draw from the global RNG; re-drawn below
            self.noise_mlp = nn.Sequential(nn.Linear(embedding_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
            self.conv_in = nn.Conv2d(c_img, channels, 3, padding=1)
            widths = [channels * m for m in channel_mult]
            self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
            ch, kept = channels, []
            for i, w in enumerate(widths):
                blocks = nn.ModuleList()
                for _ in range(num_res_blocks):
                    blocks.append(_ResBlock(ch, w, emb_dim))
                    ch = w
                self.down.append(blocks)
                kept.append(ch)
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            self.middle = _ResBlock(ch, ch, emb_dim)
            self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
            for i in reversed(range(len(widths))):
                self.up.append(_ResBlock(ch + kept[i], widths[i], emb_dim))
                ch = widths[i]
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity())
            self.norm_out = nn.GroupNorm(_groups(ch), ch)
            self.conv_out = nn.Conv2d(ch, c_img, 3, padding=1)
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(generator=generator)
        self.conv_out.weight.zero_()
        self.conv_out.bias.zero_()

    @property
    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1:] != self.event_shape or c_noise.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *{self.event_shape}] and c_noise [B], got {tuple(x.shape)}, "
                             f"{tuple(c_noise.shape)}")
        dtype = self.conv_in.weight.dtype
        emb = self.noise_mlp(self.embed(c_noise.to(dtype)))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full(c_noise.shape, self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(labels)
        elif labels is not None:
            raise ValueError("`labels` given to an unconditional UNet (num_classes=0)")
        h = self.conv_in(x.to(dtype))
        kept = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
            kept.append(h)
            h = down(h)
        h = self.middle(h, emb)
        for block, up in zip(self.up, self.upsample):
            h = block(torch.cat([h, kept.pop()], 1), emb)
            if not isinstance(up, nn.Identity):
                h = up(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(nn.functional.silu(self.norm_out(h))).to(x.dtype)
