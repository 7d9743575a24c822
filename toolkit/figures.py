"""Figures every recipe can leave in ``figures/``: training curves and mask overlays.

Matplotlib runs on the ``Agg`` backend (no display needed). Figures are written
atomically as PNG.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402

__all__ = ["save_figure", "plot_history", "segmentation_overlays", "image_grid", "reconstruction_pairs",
           "display_channels"]


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_history(history: Sequence[dict], keys: Sequence[str] | None = None) -> "plt.Figure":
    """One panel per numeric history key (train_loss, val_loss, each metric) against epoch."""
    skip = {"epoch", "time_s", "train_images_per_s", "lr"}
    if keys is None:  # every numeric key of any record (with --eval-every > 1 some records lack the metrics)
        keys = list(dict.fromkeys(k for h in history for k, v in h.items()
                                  if k not in skip and isinstance(v, (int, float))))
    cols = min(3, max(1, len(keys)))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(h["epoch"], h[key]) for h in history if key in h]  # the epochs that have it
        ax.plot([e for e, _ in points], [v for _, v in points], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def display_channels(img: torch.Tensor) -> torch.Tensor:
    """The channels of a (C, H, W) scan that are shown: all three when C == 3 (RGB), else channel 0 alone
    (grey), e.g. FLAIR of BraTS ``flair,t1ce`` (C = 2) or of all four modalities (C = 4). The one rule of the
    figures here and of the W&B media (:mod:`toolkit.wandb_media`)."""
    return img if img.shape[0] == 3 else img[:1]


def _to_display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float → (H, W) grey or (H, W, 3) RGB in [0, 1] for imshow, min-max scaled per image.

    C == 3 is shown as RGB; any other C (1, 2, 4, ...) as channel 0 in grey.
    """
    img = display_channels(image.detach().float().cpu())
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def segmentation_overlays(images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor,
                          threshold: float = 0.5, max_images: int = 6) -> "plt.Figure":
    """Scans with the true mask (green outline fill) and the prediction (red), one column each.

    images: (N, C, H, W) float (any range), min-max scaled per image; C == 3 is shown as RGB, any other
    C (1, 2, 4, ...) as channel 0 in grey. probs: (N, 1, H, W) in [0, 1]; masks: (N, 1, H, W) in {0, 1}.
    Yellow = true positive, red = false positive, green = missed tumour.
    """
    n = min(max_images, images.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        base = _to_display(images[i])
        rgb = np.stack([base] * 3, axis=-1) if base.ndim == 2 else base.copy()
        pred = (probs[i, 0].float().cpu() >= threshold).numpy()
        true = (masks[i, 0].cpu() > 0).numpy()
        color = np.zeros_like(rgb)
        color[pred & true] = (1.0, 1.0, 0.0)
        color[pred & ~true] = (1.0, 0.0, 0.0)
        color[~pred & true] = (0.0, 1.0, 0.0)
        alpha = 0.45 * (pred | true)[..., None]
        ax.imshow(rgb * (1 - alpha) + color * alpha)
        inter, total = (pred & true).sum(), pred.sum() + true.sum()
        dice = 1.0 if total == 0 else 2 * inter / total
        ax.set_title(f"Dice {dice:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("yellow: correct, red: false positive, green: missed", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(rows: Sequence[torch.Tensor], titles: Sequence[str], max_images: int = 8) -> "plt.Figure":
    """Rows of images, e.g. originals / noisy / reconstructions; each (N, C, H, W) float, min-max scaled per
    image. C == 3 is shown as RGB, any other C (1, 2, 4, ...) as channel 0 in grey."""
    n = min(max_images, rows[0].shape[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (row, title) in enumerate(zip(rows, titles)):
        for i in range(n):
            img = _to_display(row[i])
            axes[r, i].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[r, i].axis("off")
        axes[r, 0].set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def reconstruction_pairs(originals: torch.Tensor, reconstructions: torch.Tensor, count: int = 9,
                         cols: int = 3) -> "plt.Figure":
    """``count`` images beside their reconstructions: a grid of (original | reconstruction) pairs, ``cols`` per row.

    originals, reconstructions: (N, C, H, W) float in [0, 1], shown as they are (clipped to [0, 1], no
    rescaling, so colours and contrast compare honestly): C == 3 as RGB, any other C as channel 0 in grey.
    Each reconstruction's title gives its PSNR in dB over all C channels. Uses min(count, N) pairs.
    """
    n = min(count, originals.shape[0])
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.0 * 2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        a, b = (t[i].detach().float().cpu().clamp(0, 1) for t in (originals, reconstructions))
        ax_o, ax_r = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        for ax, img in ((ax_o, display_channels(a)), (ax_r, display_channels(b))):
            ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                      cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        psnr = 10 * math.log10(1.0 / max(float((a - b).pow(2).mean()), 1e-10))
        ax_o.set_title("original", fontsize=8)
        ax_r.set_title(f"reconstruction {psnr:.1f} dB", fontsize=8)
    fig.tight_layout()
    return fig
