"""Foreground-aware patch sampling for segmentation training (nnU-Net-style oversampling).

A tumour covers under 2% of a figshare slice, so most of the pixels a whole-slice batch
costs carry no tumour signal. Training on patches, a share of them centred on a tumour
pixel, gives more foreground per CPU-second; the fully convolutional models still predict
whole slices at evaluation.
"""

from __future__ import annotations

import torch

__all__ = ["ForegroundCrop"]


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
        """Top-left corners (N, 2) int64 (row, col) of the windows for masks (N, 1, H, W)."""
        n, _, h, w = masks.shape
        s, gen = self.size, self.generator
        top = torch.randint(0, h - s + 1, (n,), generator=gen)
        left = torch.randint(0, w - s + 1, (n,), generator=gen)
        want_fg = torch.rand(n, generator=gen) < self.foreground_p
        flat = masks.reshape(n, -1).cpu() > 0
        for i in torch.nonzero(want_fg & flat.any(1)).flatten().tolist():  # at most N small index draws
            pixels = torch.nonzero(flat[i]).flatten()
            p = int(pixels[torch.randint(0, len(pixels), (1,), generator=gen)])
            r, c = divmod(p, w)
            off_r, off_c = (int(v) for v in torch.randint(0, s, (2,), generator=gen))
            top[i] = min(max(r - off_r, 0), h - s)
            left[i] = min(max(c - off_c, 0), w - s)
        return torch.stack([top, left], 1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} must share N, H and W")
        n, c, h, w = images.shape
        s = self.size
        if s >= h or s >= w:
            return images, masks
        corners = self.corners(masks).to(images.device)
        rows = corners[:, :1] + torch.arange(s, device=images.device)  # (N, S)
        cols = corners[:, 1:] + torch.arange(s, device=images.device)  # (N, S)
        index = (rows * w).unsqueeze(2) + cols.unsqueeze(1)  # (N, S, S) into the flat slice

        def take(x: torch.Tensor) -> torch.Tensor:
            k = x.shape[1]
            flat = x.reshape(n, k, h * w)
            return flat.gather(2, index.reshape(n, 1, s * s).expand(n, k, s * s)).reshape(n, k, s, s)

        return take(images), take(masks)
