"""Accumulating metrics: ``reset()``, ``update(preds, targets)``, ``compute() -> dict``.

There is no distributed code here: the trainer gathers predictions and targets
across processes (``accelerator.gather_for_metrics``) and calls ``update`` on the
gathered tensors. Only small per-image statistics are kept, on the CPU, so memory
does not grow with the image size.

Segmentation metrics follow segmentation-models-pytorch ``metrics/functional.py``:
per-image true/false positives and false negatives (tp, fp, fn) are accumulated,
then reduced per image ("imagewise") or pooled over all pixels ("global").
"""

from __future__ import annotations

import math

import torch

__all__ = ["SegmentationMetrics", "Accuracy", "ReconstructionMetrics"]


def _check_same_shape(preds: torch.Tensor, targets: torch.Tensor, what: str = "preds") -> None:
    if preds.shape != targets.shape:
        raise ValueError(
            f"{what} and targets must have the same shape, got {what} {tuple(preds.shape)} "
            f"and targets {tuple(targets.shape)}"
        )
    if preds.ndim < 2:
        raise ValueError(f"{what} must have shape (N, ...) with at least 2 dims, got {tuple(preds.shape)}")


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 1.0 where den == 0 (both masks empty), float64."""
    num = num.double()
    den = den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))


def _mean_or_nan(x: torch.Tensor) -> float:
    return float(x.double().mean()) if x.numel() else math.nan


class SegmentationMetrics:
    """Binary segmentation Dice and IoU, per image and pixel-pooled.

    Args:
        threshold: predictions given as probabilities are binarised with
            ``pred >= threshold`` (the same ``>=`` rule as smp ``get_stats``);
            0 < threshold < 1, default 0.5. Bool or integer predictions are taken
            as masks already (``pred != 0``), the threshold is not used.

    ``update(preds, targets)``:
        - preds: (N, 1, H, W) (any (N, ...) works) probabilities in [0, 1], any
          float dtype; or bool/uint8/integer binary masks.
        - targets: same shape, values in {0, 1}, any dtype (floats are binarised
          with ``>= 0.5``, others with ``!= 0``).
        All non-batch dims are pooled per image. Per-image tp, fp, fn are kept as
        int64 on the CPU, in update order.

    ``compute()`` returns floats:
        - ``dice``, ``iou``: mean over images of the per-image
          Dice = 2tp / (2tp + fp + fn) and IoU = tp / (tp + fp + fn);
        - ``dice_global``, ``iou_global``: the same formulas on tp, fp, fn summed
          over all pixels of all images;
        - ``dice_tumour``: mean per-image Dice over images whose true mask is not
          empty (nan if there is none);
        - ``empty_correct``: fraction of empty-truth images predicted empty (nan if
          there is none);
        - ``num_images``: number of images seen.

    Empty masks: an image whose true AND predicted masks are both empty scores
    Dice = IoU = 1 (a correct "no tumour" answer; smp's default
    ``zero_division=1.0`` does the same). An empty true mask with any predicted
    pixel scores 0 (tp = 0, fp > 0), and so does a missed tumour. The global
    scores follow the same rule: 1 if no pixel of any image is positive in truth
    or prediction. With no images at all every score is nan.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._tp: list[torch.Tensor] = []
        self._fp: list[torch.Tensor] = []
        self._fn: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: preds (N, 1, H, W) probabilities or masks, targets (N, 1, H, W) in {0, 1}."""
        _check_same_shape(preds, targets)
        if preds.dtype.is_floating_point:
            p = preds >= self.threshold
        else:
            p = preds != 0
        t = targets >= 0.5 if targets.dtype.is_floating_point else targets != 0
        n = p.shape[0]
        p = p.reshape(n, -1)
        t = t.reshape(n, -1)
        tp = (p & t).sum(dim=1, dtype=torch.int64)
        fp = (p & ~t).sum(dim=1, dtype=torch.int64)
        fn = (~p & t).sum(dim=1, dtype=torch.int64)
        self._tp.append(tp.cpu())
        self._fp.append(fp.cpu())
        self._fn.append(fn.cpu())

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self._tp:
            z = torch.zeros(0, dtype=torch.int64)
            return z, z, z
        return torch.cat(self._tp), torch.cat(self._fp), torch.cat(self._fn)

    def per_image_scores(self) -> dict[str, torch.Tensor]:
        """Per-image scores in update order: ``{"dice": (N,), "iou": (N,)}`` float64 in [0, 1].

        Also gives ``"tp"``, ``"fp"``, ``"fn"`` (N,) int64, handy for "worst slices" tables.
        """
        tp, fp, fn = self._stats()
        return {
            "dice": _safe_ratio(2 * tp, 2 * tp + fp + fn),
            "iou": _safe_ratio(tp, tp + fp + fn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }

    def compute(self) -> dict[str, float]:
        """Return ``dice, iou, dice_global, iou_global, dice_tumour, empty_correct, num_images``."""
        tp, fp, fn = self._stats()
        n = int(tp.numel())
        if n == 0:
            nan = math.nan
            return {
                "dice": nan, "iou": nan, "dice_global": nan, "iou_global": nan,
                "dice_tumour": nan, "empty_correct": nan, "num_images": 0,
            }
        scores = self.per_image_scores()
        TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
        has_tumour = (tp + fn) > 0
        empty = ~has_tumour
        return {
            "dice": _mean_or_nan(scores["dice"]),
            "iou": _mean_or_nan(scores["iou"]),
            "dice_global": float(_safe_ratio(2 * TP, 2 * TP + FP + FN)),
            "iou_global": float(_safe_ratio(TP, TP + FP + FN)),
            "dice_tumour": _mean_or_nan(scores["dice"][has_tumour]),
            "empty_correct": _mean_or_nan((fp[empty] == 0).double()),
            "num_images": n,
        }


class Accuracy:
    """Top-1 classification accuracy.

    ``update(preds, targets)``:
        - preds: (N, C) logits or probabilities, any float dtype; the class is
          ``argmax`` over dim 1.
        - targets: (N,) int64 class indices in [0, C).

    ``compute()`` returns ``{"accuracy": float in [0, 1] (nan if no sample),
    "num_samples": int}``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._correct = 0
        self._total = 0

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: preds (N, C) scores, targets (N,) int64 class indices."""
        if preds.ndim != 2:
            raise ValueError(f"preds must have shape (N, C), got {tuple(preds.shape)}")
        if targets.ndim != 1 or targets.shape[0] != preds.shape[0]:
            raise ValueError(
                f"targets must have shape (N,) with N = preds.shape[0], got preds {tuple(preds.shape)} "
                f"and targets {tuple(targets.shape)}"
            )
        self._correct += int((preds.argmax(dim=1) == targets).sum())
        self._total += int(targets.shape[0])

    def compute(self) -> dict[str, float]:
        """Return ``{"accuracy", "num_samples"}``."""
        acc = self._correct / self._total if self._total else math.nan
        return {"accuracy": acc, "num_samples": self._total}


class ReconstructionMetrics:
    """Mean squared error and PSNR of reconstructions.

    Args:
        data_range: the range of the pixel values (max - min), > 0; 1.0 for
            images in [0, 1].

    ``update(preds, targets)``:
        - preds: (N, ...) reconstructions in [0, data_range], any float dtype.
        - targets: same shape and range.
        Per-image sums of squared errors are kept in float64 on the CPU.

    ``compute()`` returns floats:
        - ``mse``: mean squared error pooled over all pixels of all images;
        - ``psnr``: mean over images of ``10·log10(data_range² / mse_i)`` with the
          per-image ``mse_i`` clamped at >= 1e-10 (so a perfect image gives 100 dB
          for data_range 1, not inf);
        - ``psnr_global``: ``10·log10(data_range² / mse)`` (mse clamped the same way);
        - ``num_images``.
        With no images every score is nan.
    """

    def __init__(self, data_range: float = 1.0) -> None:
        if (
            isinstance(data_range, bool)
            or not isinstance(data_range, (int, float))
            or not math.isfinite(data_range)
            or data_range <= 0
        ):
            raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
        self.data_range = float(data_range)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._sse: list[torch.Tensor] = []  # (N,) float64 sums of squared errors
        self._pixels: list[torch.Tensor] = []  # (N,) int64 pixel counts per image

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: preds (N, ...) and targets (N, ...) float images."""
        _check_same_shape(preds, targets)
        n = preds.shape[0]
        if n == 0:
            return
        diff = preds.float() - targets.float()
        sse = (diff * diff).reshape(n, -1).sum(dim=1, dtype=torch.float64)
        self._sse.append(sse.cpu())
        self._pixels.append(torch.full((n,), preds[0].numel(), dtype=torch.int64))

    def _psnr(self, mse: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(self.data_range**2 / mse.clamp_min(1e-10))

    def compute(self) -> dict[str, float]:
        """Return ``mse, psnr, psnr_global, num_images``."""
        if not self._sse:
            return {"mse": math.nan, "psnr": math.nan, "psnr_global": math.nan, "num_images": 0}
        sse = torch.cat(self._sse)
        pixels = torch.cat(self._pixels).double()
        n = sse.numel()
        mse_i = sse / pixels
        mse = sse.sum() / pixels.sum()
        return {
            "mse": float(mse),
            "psnr": float(self._psnr(mse_i).mean()),
            "psnr_global": float(self._psnr(mse)),
            "num_images": n,
        }
