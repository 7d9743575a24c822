"""Symmetric encoder-decoder for binary segmentation of 240x240 scans (spec section 5).

One class, :class:`SegAutoEncoder`, gives both variants the spec asks for:

- ``skip=False``: the plain convolutional autoencoder (scan -> mask);
- ``skip=True``: the same network with concatenation skips between mirrored
  stages, i.e. a U-Net.

Layout for ``widths = (w0, w1, ..., wD)`` (depth ``D = len(widths) - 1``)::

    x (N, C, H, W) --zero-pad H, W up to a multiple of 2**D-->
    encoder stage i (i = 0..D-1): [conv3x3-BN-ReLU] x2 to w_i, then 2x2 max pool
    bottleneck:                   [conv3x3-BN-ReLU] x2 to w_D      (H / 2**D)
    decoder stage i (i = D-1..0): ConvTranspose2d(k=2, s=2) w_{i+1} -> w_i,
                                  [concat encoder stage i output if skip],
                                  [conv3x3-BN-ReLU] x2 to w_i
    head: conv1x1 w_0 -> out_channels LOGITS --crop back to H, W-->

``space_to_depth=2`` (the ``unet_s2d`` model) replaces the full-resolution stage by a lossless
2x2 pixel unshuffle in front of the encoder and a pixel shuffle after the head: the network runs
at half resolution on 4x the channels and still maps 240x240 in to 240x240 out: 1.84x faster to
train and 2.11x faster to predict on a 2-core CPU at the same parameter count (bench/seg_models.py).

Downsampling is a 2x2 max pool (no parameters, cheap on the CPU; the stride-2
alternative would add parameters for little gain). Convolutions that feed a
BatchNorm have no bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DEFAULT_WIDTHS",
    "S2D_WIDTHS",
    "SEGMENTATION_MODELS",
    "SMPUnet",
    "SegAutoEncoder",
    "build_segmentation_model",
    "pad_to_multiple",
    "parse_widths",
    "size_multiple",
]

#: Default stage widths (encoder stages ..., bottleneck): depth 4, so 240 -> 15 at the
#: bottleneck with no padding. See ``SegAutoEncoder`` for parameter counts and speed.
DEFAULT_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128)
#: Default widths of ``unet_s2d``: the U-Net's widths without its full-resolution stage (240 -> 120 by
#: the pixel unshuffle -> 15 at the bottleneck); 482,932 parameters for one channel in and out.
S2D_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """Zero-pad (N, C, H, W) evenly so H and W are multiples of ``multiple``.

    Returns (padded tensor, crop) where ``crop(y)`` cuts a (N, C', H', W') output of the
    padded size back to the original H, W.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    if not (ph or pw):
        return x, lambda y: y
    return F.pad(x, (left, pw - left, top, ph - top)), lambda y: y[..., top: top + h, left: left + w]


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """[conv3x3 (no bias) - BatchNorm - ReLU] x 2, keeping H and W."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SegAutoEncoder(nn.Module):
    """Symmetric conv encoder-decoder (``skip=False``) or U-Net (``skip=True``).

    Args:
        in_channels: channels of the input scan (1 for a single MRI sequence).
        out_channels: channels of the output mask logits (1 for binary masks).
        widths: stage widths ``(w0, ..., w_{D-1}, w_D)``: one encoder stage per
            entry but the last, which is the bottleneck width; the decoder mirrors
            the encoder. At least 2 entries, all positive ints.
        skip: if True, concatenate each encoder stage's output to the input of the
            mirrored decoder stage (U-Net); if False, the plain autoencoder.
        space_to_depth: 1 (default) or a factor f > 1: the input is zero-padded to a multiple of
            ``f * 2**depth``, pixel-unshuffled to (N, in_channels*f*f, H/f, W/f) before the first
            stage, and the head's (N, out_channels*f*f, H/f, W/f) output pixel-shuffled back to
            full resolution; no information is dropped on the way in.
        deep_supervision: if True, every decoder stage but the last gets a 1x1 head of its own
            (nnU-Net's deep supervision: ``widths[1:-1]`` x out_channels weights and biases more, e.g. 98
            for ``unet_s2d``'s default widths) and the model returns, in training mode only, a list of
            logits: the full-resolution output first, then one per auxiliary head at 1/2, 1/4, ... of the
            last decoder stage's resolution (``unet_s2d`` at 96 px: (N, C, 96, 96), (N, C, 24, 24), (N, C, 12, 12)).
            Training sides must then need no padding (multiples of ``size_multiple``). In eval mode the
            heads are unused and the output is the one tensor below, as without them.

    Parameters with the default widths (8, 16, 32, 64, 128), in=out=1:
    ``skip=True`` 486,409 and ``skip=False`` 437,449 trainable parameters,
    both within the spec's 500,000 budget. The first stage is narrow (8) because
    the full-resolution stages dominate the cost: on a 2-core CPU, a batch of 8
    at 240x240 (forward + backward, bf16 autocast, channels_last) takes about
    0.21 s, against 0.42 s for widths (16, 32, 64, 128) of the same size.

    Shapes:
        - input: (N, in_channels, H, W) float (fp32, or bf16 under autocast); any
          H, W >= 1. H and W are zero-padded (``F.pad``, split evenly between the
          two sides) up to a multiple of ``2**depth`` and the output is cropped
          back, so 240x240 in gives 240x240 out (240 = 15 * 16 needs no padding
          at depth 4).
        - output: (N, out_channels, H, W) LOGITS (no sigmoid); mask probabilities
          are ``torch.sigmoid(output)``, the binary mask ``output > 0``. Under
          autocast the output dtype is the autocast dtype (e.g. bf16); Accelerate's
          mixed precision casts the model output back to float32.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        skip: bool = False,
        space_to_depth: int = 1,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        widths = tuple(widths)
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must hold at least 2 positive ints, got {widths!r}")
        if not isinstance(skip, bool):
            raise ValueError(f"skip must be a bool, got {skip!r}")
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision must be a bool, got {deep_supervision!r}")
        if isinstance(space_to_depth, bool) or not isinstance(space_to_depth, int) or space_to_depth < 1:
            raise ValueError(f"space_to_depth must be a positive int, got {space_to_depth!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.widths = widths
        self.skip = skip
        self.depth = len(widths) - 1
        self.space_to_depth = space_to_depth
        self.size_multiple = space_to_depth * 2**self.depth  # sides that need no padding (240 = 15 x 16 here)
        f2 = space_to_depth * space_to_depth

        enc_widths = widths[:-1]
        self.encoder = nn.ModuleList()
        ch = in_channels * f2
        for w in enc_widths:
            self.encoder.append(_double_conv(ch, w))
            ch = w
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _double_conv(ch, widths[-1])

        # decoder[k] mirrors encoder[D-1-k]
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        ch = widths[-1]
        for w in reversed(enc_widths):
            self.upsample.append(nn.ConvTranspose2d(ch, w, kernel_size=2, stride=2))
            self.decoder.append(_double_conv(2 * w if skip else w, w))
            ch = w
        self.head = nn.Conv2d(ch, out_channels * f2, kernel_size=1)
        # aux_heads[k]: decoder stage D-2-k (the coarser ones), finest first
        self.aux_heads = nn.ModuleList(nn.Conv2d(w, out_channels, kernel_size=1) for w in enc_widths[1:]) \
            if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Map scans (N, in_channels, H, W) to mask logits (N, out_channels, H, W); with deep supervision in
        training mode, a list: those logits, then the auxiliary heads' coarser ones (see the class)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        f = self.space_to_depth
        supervise = self.aux_heads is not None and self.training
        if supervise and (x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple):
            raise ValueError(f"deep supervision trains on sides that are multiples of {self.size_multiple}, got "
                             f"{tuple(x.shape[-2:])}: choose a crop or image size that is")
        x, crop = pad_to_multiple(x, f * 2**self.depth)
        if f > 1:
            x = F.pixel_unshuffle(x, f)

        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x if self.skip else None)
            x = self.pool(x)
        x = self.bottleneck(x)
        coarse = []
        for up, stage, s in zip(self.upsample, self.decoder, reversed(skips)):
            x = up(x)
            if s is not None:
                x = torch.cat([x, s], dim=1)
            x = stage(x)
            coarse.append(x)
        x = self.head(x)
        if f > 1:
            x = F.pixel_shuffle(x, f)
        if supervise:  # coarse[-1] feeds the main head; the others, finest first, their own
            return [crop(x)] + [head(c) for head, c in zip(self.aux_heads, reversed(coarse[:-1]))]
        return crop(x)

    def extra_repr(self) -> str:
        s2d = f", space_to_depth={self.space_to_depth}" if self.space_to_depth > 1 else ""
        ds = ", deep_supervision=True" if self.aux_heads is not None else ""
        return f"widths={self.widths}, skip={self.skip}, depth={self.depth}{s2d}{ds}"


#: name -> whether the variant has skip connections; "unet_s2d" is the U-Net behind a 2x2
#: space-to-depth stem, "smp_unet" the segmentation-models-pytorch baseline (see :class:`SMPUnet`).
SEGMENTATION_MODELS: dict[str, bool] = {"autoencoder": False, "unet": True, "unet_s2d": True, "smp_unet": True}


class SMPUnet(nn.Module):
    """Baseline: segmentation-models-pytorch ``Unet`` with a small timm encoder, no pretrained weights.

    Default ``tu-mobilenetv3_small_050`` with decoder channels (32, 16, 16, 8, 8):
    390,473 parameters for one input channel, inside the 500,000 budget, so it is
    compared with the custom models at the same size. smp needs sides divisible by 32:
    the input is zero-padded and the output cropped back. (N, C, H, W) float →
    (N, out_channels, H, W) logits.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, encoder: str = "tu-mobilenetv3_small_050",
                 decoder_channels: Sequence[int] = (32, 16, 16, 8, 8), encoder_weights: str | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder, encoder_weights=encoder_weights, in_channels=in_channels,
                            classes=out_channels, decoder_channels=tuple(decoder_channels))
        self.size_multiple = 32  # sides that need no padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, self.size_multiple)
        return crop(self.net(x))


def parse_widths(text: str) -> tuple[int, ...]:
    """``"8,16,32,64,128"`` → (8, 16, 32, 64, 128); ``""`` → () (the default widths). Raises ValueError unless the
    entries are positive ints, at least two of them."""
    parts = str(text or "").split(",") if str(text or "").strip() else []
    if not all(p.strip() for p in parts):  # "16,,32": a width left out, not silently dropped
        raise ValueError(f"widths must be empty or at least two positive ints, got {text!r} (an empty item)")
    widths = tuple(int(w) for w in parts)
    if any(w < 1 for w in widths) or len(widths) == 1:
        raise ValueError(f"widths must be empty or at least two positive ints, got {text!r}")
    return widths


def size_multiple(name: str, widths: Sequence[int] | None = None) -> int:
    """The sides (pixels) model ``name`` with ``widths`` (None or empty: its default) takes without padding:
    ``2**depth``, times 2 for ``unet_s2d`` (16 for both defaults), 32 for ``smp_unet``; as the built model's
    ``size_multiple``, without building it. Raises ValueError for an unknown name."""
    if name not in SEGMENTATION_MODELS:
        raise ValueError(f"unknown segmentation model {name!r}; valid names: {sorted(SEGMENTATION_MODELS)}")
    if name == "smp_unet":
        return 32
    widths = tuple(widths or (S2D_WIDTHS if name == "unet_s2d" else DEFAULT_WIDTHS))
    return (2 if name == "unet_s2d" else 1) * 2 ** (len(widths) - 1)


def build_segmentation_model(name: str, in_channels: int = 1, out_channels: int = 1,
                             widths: Sequence[int] | None = None, deep_supervision: bool = False) -> nn.Module:
    """Build a segmentation model by name: ``autoencoder`` (plain symmetric, no skips),
    ``unet`` (symmetric with skips), ``unet_s2d`` (the U-Net behind a 2x2 space-to-depth stem) or
    ``smp_unet`` (the smp baseline).

    ``widths``: stage widths of the symmetric models (see :class:`SegAutoEncoder`); None or empty =
    :data:`DEFAULT_WIDTHS` (:data:`S2D_WIDTHS` for ``unet_s2d``). The smp baseline has its own layout and refuses other widths.
    Returns a model mapping (N, in_channels, H, W) float scans to (N, out_channels, H, W)
    logits (with ``deep_supervision``, a list of them in training mode: :class:`SegAutoEncoder`). Raises
    ValueError for an unknown name (the message lists the valid names) and for deep supervision of ``smp_unet``.
    """
    if name not in SEGMENTATION_MODELS:
        raise ValueError(
            f"unknown segmentation model {name!r}; valid names: {sorted(SEGMENTATION_MODELS)}"
        )
    if name == "smp_unet":
        if widths or deep_supervision:
            raise ValueError("widths and deep supervision apply to the unet, unet_s2d and autoencoder models, "
                             "not to smp_unet")
        return SMPUnet(in_channels, out_channels)
    if name == "unet_s2d":
        return SegAutoEncoder(in_channels, out_channels, widths=tuple(widths or S2D_WIDTHS), skip=True,
                              space_to_depth=2, deep_supervision=deep_supervision)
    return SegAutoEncoder(in_channels, out_channels, widths=tuple(widths or DEFAULT_WIDTHS),
                          skip=SEGMENTATION_MODELS[name], deep_supervision=deep_supervision)
