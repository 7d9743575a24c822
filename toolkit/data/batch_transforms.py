"""Every on-device batch operation of the data pipeline, applied to whole batches on their device.

Loaders keep batches uint8 (0..255) until the device; there the objective's ``preprocess``
(:func:`to_unit_range`, :func:`standardize_per_image`, :class:`Normalize`,
:class:`ResizeNormalize`, :func:`from_zscore_uint8` for z-scored MRI volumes) makes them float, and its ``augment`` / ``crop``
(:class:`RandomCropFlip`, :class:`ForegroundCrop`) and the denoising task's
:func:`add_gaussian_noise` work on the whole batch without per-sample Python work.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_NOISE_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ForegroundCrop", "Normalize", "RandomCropFlip",
           "ResizeNormalize", "add_gaussian_noise", "from_zscore_uint8", "input_preprocess", "standardize_per_image", "to_unit_range"]

#: Std of the denoising task's Gaussian noise, in [0, 1] pixel units.
DEFAULT_NOISE_STD = 0.3
#: torchvision's ImageNet normalisation, pixels in [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 in 0..255 → float32 in [0, 1]; float input is returned as float32 unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def standardize_per_image(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N, C, H, W) uint8 or float → float32 with zero mean and unit std per image and channel.

    MRI intensities have no absolute scale, so each slice is normalised on its own.
    """
    x = to_unit_range(x)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)


def from_zscore_uint8(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 0..255 from z-scored NIfTI volumes → float32 z in [-ZSCORE_CLIP, +ZSCORE_CLIP] ([-4, 4]).

    Undoes :func:`toolkit.data.mri.nifti.zscore_uint8`: ``z = x * 2 * ZSCORE_CLIP / 255 - ZSCORE_CLIP`` (steps
    of 8/255 ≈ 0.031); non-brain pixels (0) become -ZSCORE_CLIP. The preprocess for data whose
    ``Discovery.intensity`` is "zscore". Raises TypeError for another dtype (the mapping is for uint8).
    """
    from .mri.nifti import ZSCORE_CLIP

    if x.dtype != torch.uint8:
        raise TypeError(f"from_zscore_uint8 expects uint8 images (0..255), got {x.dtype}")
    return x.float().mul_(2.0 * ZSCORE_CLIP / 255.0).sub_(ZSCORE_CLIP)


def input_preprocess(intensity: str = "per_slice"):
    """The preprocess (uint8 (N, C, H, W) → float32 (N, C, H, W)) that matches how a data set's slices were
    stored (``Discovery.intensity``): "per_slice" → :func:`standardize_per_image`, "zscore" →
    :func:`from_zscore_uint8`. Raises ValueError for any other value ("mixed" data have no single one)."""
    table = {"per_slice": standardize_per_image, "zscore": from_zscore_uint8}
    if intensity not in table:
        raise ValueError(f"intensity must be per_slice or zscore, got {intensity!r} (folders of 2D images and of "
                         "NIfTI volumes cannot be mixed in one run)")
    return table[intensity]


def add_gaussian_noise(images: torch.Tensor, std: float = DEFAULT_NOISE_STD, mean: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a new tensor: ``images`` (any shape, float in [0, 1]) plus N(mean, std²) noise, clamped to [0, 1];
    the noise from ``generator`` (on the images' device) when given, else from torch's global RNG."""
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    noise = (torch.randn_like(images, dtype=torch.float32) if generator is None else
             torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)) * std + mean
    return (images.float() + noise).clamp_(0.0, 1.0)


class Normalize:
    """(N, C, H, W) uint8 0..255 (or float in [0, 1]) → float32 ``(x / 255 - mean) / std`` per channel.

    ``mean`` and ``std``: C values each, for pixels in [0, 1] (e.g. ``toolkit.data.cifar.CIFAR10_MEAN``
    and ``CIFAR10_STD``, with which the result lies in about [-2.0, 2.1]). Runs on the batch's
    device; this is the classification objective's ``preprocess``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() - mean * scale) / (std * scale)


class ResizeNormalize:
    """(N, 3, H, W) uint8 0..255 or float 0..1 → float32 (N, 3, size, size), ``(x - mean) / std`` per channel.

    Bilinear resizing (``size=None`` keeps H x W) runs on the batch's device, e.g. STL-10's
    96x96 to ResNet's ImageNet input of 224x224 with ImageNet mean/std.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: int | None = 224) -> None:
        if size is not None and size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.normalize = Normalize(mean, std)
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class RandomCropFlip:
    """Batched augmentation: random crop after zero padding, and random horizontal flip, per image.

    (N, C, H, W) float → (N, C, H, W) float, a new tensor. Each image is padded by
    ``padding`` pixels on every side with zeros (the channel mean, after
    normalisation), cut back to H x W at a random offset, and mirrored left-right
    with probability ``flip_p``. One gather over the whole batch on its device; no
    per-sample Python work. ``generator`` (optional, on the batch's device) makes it
    reproducible. The objective calls it in training mode only.
    """

    def __init__(self, padding: int = 4, flip_p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if padding < 0 or not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= flip_p <= 1, got {padding} and {flip_p}")
        self.padding, self.flip_p, self.generator = padding, flip_p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p, dev, gen = self.padding, x.device, self.generator
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=gen)
        flip = torch.rand((n, 1), device=dev, generator=gen) < self.flip_p
        cols = torch.arange(w, device=dev).expand(n, w)
        cols = torch.where(flip, w - 1 - cols, cols) + dx  # (N, W)
        rows = torch.arange(h, device=dev).expand(n, h) + dy  # (N, H)
        index = (rows * (w + 2 * p)).unsqueeze(2) + cols.unsqueeze(1)  # (N, H, W) into the flat padded image
        flat = padded.reshape(n, c, -1)
        return flat.gather(2, index.reshape(n, 1, h * w).expand(n, c, h * w)).reshape(n, c, h, w)


class ForegroundCrop:
    """Batched random crop of images and masks, biased towards the foreground.

    Call as ``crop(images, masks)`` with images (N, C, H, W) float (already standardised, so
    the crop keeps whole-slice intensity statistics) and masks (N, 1, H, W) {0, 1} of the same
    H, W; returns (images (N, C, S, S), masks (N, 1, S, S)) with S = ``size`` (views are
    not shared: new tensors). For each slice, with probability ``foreground_p`` and when its
    mask has any tumour pixel, the window is placed so that a tumour pixel drawn uniformly
    lands at a uniformly random position inside it; otherwise the window is placed uniformly
    at random. Windows always lie inside the slice. ``size`` >= H or W returns the inputs.

    Args:
        size: side of the square patch, pixels (>= 1).
        foreground_p: probability in [0, 1] that a slice with tumour gets a window containing tumour.
        generator: optional ``torch.Generator`` on the CPU for reproducible windows.
    """

    def __init__(self, size: int, foreground_p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if not 0.0 <= foreground_p <= 1.0:
            raise ValueError(f"foreground_p must be in [0, 1], got {foreground_p}")
        self.size, self.foreground_p, self.generator = int(size), float(foreground_p), generator

    def corners(self, masks: torch.Tensor) -> torch.Tensor:
        """Top-left corners (N, 2) int64 (row, col), on the masks' device, of the windows for masks (N, 1, H, W).

        Every random number is drawn on the CPU from ``generator`` (the same windows on every device) and sent to
        the masks' device without waiting for it; the tumour pixel is found there (the k-th of each slice by a
        cumulative count), so a CUDA step never waits for the GPU here.
        """
        n, _, h, w = masks.shape
        s, device = self.size, masks.device
        # per slice: top, left, foreground wanted, which tumour pixel, row and column offset of it in the window
        u = torch.rand(n, 6, generator=self.generator).to(device, non_blocking=True)  # float32: every device has it

        def whole(x: torch.Tensor, m: int) -> torch.Tensor:  # floor(x * m), x in [0, 1): 0 .. m-1 (x * m may round up)
            return (x * m).long().clamp(0, m - 1)

        flat = masks.reshape(n, h * w) > 0
        count = flat.sum(1)  # (N,) tumour pixels
        k = torch.minimum((u[:, 3] * count).long(), count - 1)  # the k-th tumour pixel (0-based; -1 without any)
        pixel = (flat.cumsum(1, dtype=torch.int32) <= k[:, None]).sum(1)  # its flat index
        top = (pixel // w - whole(u[:, 4], s)).clamp(0, h - s)
        left = (pixel % w - whole(u[:, 5], s)).clamp(0, w - s)
        tumour = (u[:, 2] < self.foreground_p) & (count > 0)
        top = torch.where(tumour, top, whole(u[:, 0], h - s + 1))
        left = torch.where(tumour, left, whole(u[:, 1], w - s + 1))
        return torch.stack([top, left], 1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} must share N, H and W")
        n, c, h, w = images.shape
        s = self.size
        if s >= h or s >= w:
            return images, masks
        corners = self.corners(masks).to(images.device)  # masks and images share a device: no copy
        rows = corners[:, :1] + torch.arange(s, device=images.device)  # (N, S)
        cols = corners[:, 1:] + torch.arange(s, device=images.device)  # (N, S)
        index = (rows * w).unsqueeze(2) + cols.unsqueeze(1)  # (N, S, S) into the flat slice

        def take(x: torch.Tensor) -> torch.Tensor:
            k = x.shape[1]
            flat = x.reshape(n, k, h * w)
            return flat.gather(2, index.reshape(n, 1, s * s).expand(n, k, s * s)).reshape(n, k, s, s)

        return take(images), take(masks)
