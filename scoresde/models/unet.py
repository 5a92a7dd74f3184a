"""A convolutional U-Net backbone for images ``[B, C, H, W]``: ``UNet(x_in, c_noise[, labels])``, from toy to DDPM++ size.

A backbone in the sense of ``scoresde.models.precond``: no preconditioning of its own; wrap it in
``Preconditioned(sde, (C, H, W), backbone=partial(UNet, channels=32))``.  Two layouts share the blocks:

    emb = Lin(SiLU(Lin(embed(c_noise))))  (+ label embedding)      embed: Gaussian Fourier or positional
    ResBlock(h) = s * (skip(h) + Conv3x3(Dropout(SiLU(GN(Conv3x3(SiLU(GN(h))) + Lin(emb))))))
    Attention(h) = s * (h + Proj(MultiHeadSelfAttention(GN(h))))      over the H W positions
    s = 1/sqrt(2) with skip_rescale (DDPM++), else 1

``layout="compact"`` (default; the toy U-Net the tests use)::

    h = Conv3x3(x)
    down, level i = 0..L-1:  num_res_blocks x ResBlock(ch_i) (+ Attention), keep h; Conv3x3 stride 2 (not last)
    middle: ResBlock (+ Attention, ResBlock with middle_attention)
    up, level i = L-1..0:    concat the kept h; ResBlock(ch_i) (+ Attention); nearest x2 + Conv3x3 (not at level 0)

``layout="ddpm"``: DDPM's U-Net (Ho et al. 2020, appendix B, after PixelCNN++), the layout of
DDPM++ (Song et al. 2021, appendix H) and of EDM's ``SongUNet`` (Karras et al. 2022): every
block's output and every downsampling is kept; the way up has num_res_blocks + 1 ResBlocks per
level, each fed the concatenation with one kept activation; middle ResBlock, Attention, ResBlock::

    h = Conv3x3(x); keep h
    down, level i:  num_res_blocks x [ResBlock(ch_i) (+ Attention); keep h]; Conv3x3 stride 2, keep h (not last)
    middle: ResBlock, Attention, ResBlock
    up, level i = L-1..0:  (num_res_blocks + 1) x [concat a kept h; ResBlock(ch_i) (+ Attention)]; upsample (not 0)

Both end in Conv3x3(SiLU(GN(h))), initialised to zero (F = 0 at the start); attention's output
projection is zero too (the block starts as the identity, as in DDPM).  ch_i = channels *
channel_mult[i]; "Attention" at the levels whose resolution (H at that level) is in
``attn_resolutions``; H and W must be divisible by 2^(L-1).  Weights are initialised once from
``generator`` (PyTorch's default scheme drawn from it, ``mlp.init_weights``, as ``MLPBackbone``);
torch's global RNG is left untouched, except by ``nn.Dropout`` in training.  ``num_parameters``
holds the model's parameter count.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_generator, check_in, check_int, check_nonnegative
from .mlp import GaussianFourierEmbedding, SinusoidalEmbedding, init_weights, labels_or_null

__all__ = ["UNet", "LAYOUTS", "EMBEDDINGS"]

LAYOUTS = ("compact", "ddpm")
EMBEDDINGS = ("fourier", "positional")


def _groups(ch: int, groups: int = 8) -> int:
    """GroupNorm's group count for ``ch`` channels: gcd(groups, ch) (groups = 32 in DDPM / DDPM++)."""
    return math.gcd(groups, ch)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, skip_scale: float = 1.0,
                 groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin, groups), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout, groups), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.skip_scale = skip_scale

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        if self.dropout is None:
            out = self.conv2(nn.functional.silu(self.norm2(out)))
        else:
            out = self.conv2(self.dropout(nn.functional.silu(self.norm2(out))))
        out = self.skip(h) + out
        return out if self.skip_scale == 1.0 else out * self.skip_scale


class _Attention(nn.Module):
    """Multi-head self-attention over the H W positions, residual: s (h + Proj(attn(GN(h))))."""

    def __init__(self, ch: int, num_heads: int, skip_scale: float = 1.0, groups: int = 8):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide every attended width, got width {ch}")
        self.norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        self.num_heads, self.skip_scale = num_heads, skip_scale

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.num_heads, c // self.num_heads, height * width).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = h + self.proj(out.transpose(-1, -2).reshape(b, c, height, width))
        return out if self.skip_scale == 1.0 else out * self.skip_scale


class UNet(nn.Module):
    """Convolutional U-Net ``x [B, C, H, W], c_noise [B] (, labels [B]) -> [B, C, H, W]`` (module docstring).

    Args:
        event_shape: ``(C, H, W)``.
        channels: base width; ``channel_mult``: width multiplier per level (L = its length).
        num_res_blocks: residual blocks per level on the way down.
        embedding: ``"fourier"`` (Gaussian Fourier features of c_noise, std ``fourier_scale``; NCSN++)
            or ``"positional"`` (DDPM's sinusoids of ``positional_scale * c_noise``; DDPM++).
        embedding_dim: size of that embedding; ``emb_mult``: the noise embedding's width is
            ``emb_mult * channels``.
        attn_resolutions: resolutions (H at a level) with self-attention after each ResBlock;
            ``num_heads`` heads; ``middle_attention``: ResBlock, Attention, ResBlock in the middle
            (always so in the "ddpm" layout).
        dropout: dropout probability inside every ResBlock (0: none).
        layout: ``"compact"`` or ``"ddpm"`` (module docstring).
        skip_rescale: scale residual sums by 1/sqrt(2) (DDPM++).
        norm_groups: GroupNorm groups (gcd with the width): 8 (default), 32 in DDPM / DDPM++.
        num_classes: C > 0 adds a label embedding of C + 1 rows (row C: the null label, for ``labels=None``).
        generator: initialises weights and Fourier frequencies.
    """

    def __init__(self, event_shape: tuple[int, ...] = (1, 16, 16), *, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), num_res_blocks: int = 1, embedding_dim: int = 64,
                 fourier_scale: float = 4.0, num_classes: int = 0, embedding: str = "fourier",
                 positional_scale: float = 1000.0, emb_mult: int = 2, attn_resolutions: tuple[int, ...] = (),
                 num_heads: int = 1, middle_attention: bool = False, dropout: float = 0.0, layout: str = "compact",
                 skip_rescale: bool = False, norm_groups: int = 8, generator: torch.Generator | None = None):
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
        check_in("embedding", embedding, EMBEDDINGS)
        check_in("layout", layout, LAYOUTS)
        check_int("emb_mult", emb_mult)
        check_int("num_heads", num_heads)
        check_int("norm_groups", norm_groups)
        if not 0 <= check_nonnegative("dropout", dropout) < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        attn_resolutions = tuple(attn_resolutions)
        resolutions = [event_shape[1] // 2**i for i in range(len(channel_mult))]
        if any(r not in resolutions for r in attn_resolutions):
            raise ValueError(f"`attn_resolutions` {list(attn_resolutions)} must be among the levels' resolutions "
                             f"{resolutions}")
        factor = 2 ** (len(channel_mult) - 1)
        if event_shape[1] % factor or event_shape[2] % factor:
            raise ValueError(f"H and W of `event_shape` {event_shape} must be divisible by 2^(levels-1) = {factor}")
        generator = check_generator(generator)
        self.event_shape, self.num_classes, self.layout = event_shape, num_classes, layout
        self._config = dict(event_shape=list(event_shape), channels=channels, channel_mult=list(channel_mult),
                            num_res_blocks=num_res_blocks, embedding_dim=embedding_dim,
                            fourier_scale=fourier_scale, num_classes=num_classes)
        extra = dict(embedding=embedding, positional_scale=positional_scale, emb_mult=emb_mult,
                     attn_resolutions=list(attn_resolutions), num_heads=num_heads, middle_attention=middle_attention,
                     dropout=dropout, layout=layout, skip_rescale=skip_rescale, norm_groups=norm_groups)
        defaults = dict(embedding="fourier", positional_scale=1000.0, emb_mult=2, attn_resolutions=[], num_heads=1,
                        middle_attention=False, dropout=0.0, layout="compact", skip_rescale=False, norm_groups=8)
        self._config.update({k: v for k, v in extra.items() if v != defaults[k]})  # old configs stay as they were
        c_img, emb_dim = event_shape[0], emb_mult * channels
        scale = 1 / math.sqrt(2) if skip_rescale else 1.0
        if embedding == "fourier":
            self.embed = GaussianFourierEmbedding(embedding_dim, fourier_scale, generator)
        else:
            self.embed = SinusoidalEmbedding(embedding_dim, input_scale=positional_scale)

        def res(cin, cout):
            return _ResBlock(cin, cout, emb_dim, dropout, scale, norm_groups)

        def attn(ch, level=None):  # level None: the middle's, always
            if level is None or resolutions[level] in attn_resolutions:
                return _Attention(ch, num_heads, scale, norm_groups)
            return None

        with torch.device("meta"):  # allocated without drawing from torch's global RNG; init_weights draws them
            self.noise_mlp = nn.Sequential(nn.Linear(embedding_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
            self.conv_in = nn.Conv2d(c_img, channels, 3, padding=1)
            widths = [channels * m for m in channel_mult]
            build = self._build_compact if layout == "compact" else self._build_ddpm
            ch = build(widths, num_res_blocks, res, attn, middle_attention or layout == "ddpm")
            self.norm_out = nn.GroupNorm(_groups(ch, norm_groups), ch)
            self.conv_out = nn.Conv2d(ch, c_img, 3, padding=1)
        init_weights(self, generator)
        with torch.no_grad():  # F = 0 at the start; attention blocks start as the identity
            self.conv_out.weight.zero_()
            self.conv_out.bias.zero_()
            for m in self.modules():
                if isinstance(m, _Attention):
                    m.proj.weight.zero_()
                    m.proj.bias.zero_()
        self.num_parameters = sum(p.numel() for p in self.parameters())

    def _build_compact(self, widths, num_res_blocks, res, attn, middle_attention) -> int:
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, kept = self.conv_in.out_channels, []
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(res(ch, w))
                ch = w
                attention = attn(ch, i)
                if attention is not None:
                    blocks.append(attention)
            self.down.append(blocks)
            kept.append(ch)
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.middle = res(ch, ch) if not middle_attention else nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            block = res(ch + kept[i], widths[i])
            ch = widths[i]
            attention = attn(ch, i)
            self.up.append(block if attention is None else nn.ModuleList([block, attention]))
            self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity())
        return ch

    def _build_ddpm(self, widths, num_res_blocks, res, attn, middle_attention) -> int:
        ch = self.conv_in.out_channels
        kept = [ch]
        self.enc = nn.ModuleList()  # per level: ModuleList of [ResBlock, Attention | Identity] pairs, then downsample
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.append(nn.ModuleList([res(ch, w), attn(w, i) or nn.Identity()]))
                ch = w
                kept.append(ch)
            if i < len(widths) - 1:
                level.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                kept.append(ch)
            self.enc.append(level)
        self.mid = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
        self.dec = nn.ModuleList()
        for i in reversed(range(len(widths))):
            level = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.append(nn.ModuleList([res(ch + kept.pop(), widths[i]), attn(widths[i], i) or nn.Identity()]))
                ch = widths[i]
            if i > 0:
                level.append(nn.Conv2d(ch, ch, 3, padding=1))
            self.dec.append(level)
        return ch

    @property
    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1:] != self.event_shape or c_noise.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *{self.event_shape}] and c_noise [B], got {tuple(x.shape)}, "
                             f"{tuple(c_noise.shape)}")
        dtype = self.conv_in.weight.dtype
        emb = self.noise_mlp(self.embed(c_noise.to(dtype)))
        labels = labels_or_null(labels, self.num_classes, c_noise, "UNet")
        if labels is not None:
            emb = emb + self.label_embedding(labels)
        h = self.conv_in(x.to(dtype))
        h = self._compact(h, emb) if self.layout == "compact" else self._ddpm(h, emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h))).to(x.dtype)

    def _compact(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        kept = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
            kept.append(h)
            h = down(h)
        h = _apply(self.middle, h, emb)
        for block, up in zip(self.up, self.upsample):
            h = _apply(block, torch.cat([h, kept.pop()], 1), emb)
            if not isinstance(up, nn.Identity):
                h = up(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
        return h

    def _ddpm(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        kept = [h]
        for level in self.enc:
            for step in level:
                h = _apply(step, h, emb) if isinstance(step, nn.ModuleList) else step(h)
                kept.append(h)
        h = _apply(self.mid, h, emb)
        for level in self.dec:
            for step in level:
                if isinstance(step, nn.ModuleList):
                    h = _apply(step, torch.cat([h, kept.pop()], 1), emb)
                else:
                    h = step(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
        return h


def _apply(block, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """A ResBlock / Attention, or a ModuleList of them in order (Identity entries skipped)."""
    if isinstance(block, nn.ModuleList):
        for b in block:
            if not isinstance(b, nn.Identity):
                h = b(h, emb)
        return h
    return block(h, emb)
