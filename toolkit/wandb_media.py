"""W&B media beyond the PNG figures: mask overlays, reconstruction grids, the worst validation slices.

Segmentation runs log each epoch's first validation images as ``wandb.Image`` with W&B's
interactive mask overlays (``prediction`` and ``ground_truth``, toggled in the W&B UI), and
at the end of training a ``wandb.Table`` of the validation slices with the lowest Dice.
Reconstruction and denoising runs log a grid per epoch: rows of inputs, outputs, targets.

Only the main process talks to W&B; the worst-slices pass runs on every process because
it gathers the per-image Dice across processes (``gather_for_metrics``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from .metrics import SegmentationMetrics
from .objectives import ReconstructionObjective, SegmentationObjective, StepOutput

__all__ = ["MediaLogger", "display_uint8", "masked_image", "reconstruction_grid", "CLASS_LABELS"]

CLASS_LABELS = {0: "background", 1: "tumour"}
EPOCH_IMAGES = 6  # validation images with mask overlays logged per epoch
WORST_SLICES = 12  # rows of the worst-validation-slices table


def display_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float of any range → uint8 (H, W) grey (C = 1, 2 or 4+: first channel) or (H, W, 3) RGB.

    Min-max scaled per image to 0..255, as the figures show scans.
    """
    img = image.detach().float().cpu()
    img = img[:3] if img.shape[0] == 3 else img[:1]
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    arr = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def masked_image(image: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, threshold: float,
                 caption: str = ""):
    """``wandb.Image`` of a scan with W&B mask overlays of the prediction and the truth.

    image: (C, H, W) float (any range); prob: (1, H, W) probabilities in [0, 1];
    mask: (1, H, W) in {0, 1}. The prediction is ``prob >= threshold``; masks are uint8 class ids.
    """
    import wandb

    pred = (prob[0].float().cpu() >= threshold).to(torch.uint8).numpy()
    true = (mask[0].cpu() > 0).to(torch.uint8).numpy()
    return wandb.Image(display_uint8(image), caption=caption or None, masks={
        "prediction": {"mask_data": pred, "class_labels": CLASS_LABELS},
        "ground_truth": {"mask_data": true, "class_labels": CLASS_LABELS},
    })


def reconstruction_grid(rows: Sequence[torch.Tensor], caption: str, max_images: int = 8):
    """``wandb.Image`` of a grid: one row per tensor of ``rows`` (each (N, C, H, W) float in [0, 1]).

    Values are clipped to [0, 1], not rescaled, so the rows compare honestly; uses min(max_images, N) columns.
    """
    import wandb
    from torchvision.utils import make_grid

    n = min(max_images, rows[0].shape[0])
    tiles = torch.cat([r[:n].detach().float().cpu().clamp(0, 1) for r in rows])
    grid = make_grid(tiles, nrow=n, padding=2, pad_value=1.0)
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return wandb.Image(arr, caption=caption)


class MediaLogger:
    """Logs the media of one training run; does nothing when W&B is off or the objective has no media.

    ``enabled`` must be the same on every process (it decides who joins the gathering pass).
    """

    def __init__(self, accelerator, objective, metrics: Sequence, val_data, enabled: bool) -> None:
        self.acc, self.objective, self.val_data = accelerator, objective, val_data
        self.enabled = enabled
        self.segmentation = isinstance(objective, SegmentationObjective)
        self.reconstruction = isinstance(objective, ReconstructionObjective)
        thresholds = [m.threshold for m in metrics if isinstance(m, SegmentationMetrics)]
        self.threshold = thresholds[0] if thresholds else 0.5

    def _run(self):
        from .tracking import wandb_run

        return wandb_run(self.acc) if self.enabled else None

    def log_epoch(self, sample: StepOutput | None, step: int) -> None:
        """Main process: masked images (segmentation) or a grid (reconstruction) of the first validation batch."""
        run = self._run()
        if run is None or sample is None:
            return
        if self.segmentation:
            n = min(EPOCH_IMAGES, sample.inputs.shape[0])
            images = [masked_image(sample.inputs[i], sample.preds[i], sample.targets[i], self.threshold,
                                   caption=f"validation image {i}") for i in range(n)]
            run.log({"val/segmentation": images}, step=step)
        elif self.reconstruction:
            noisy = not torch.equal(sample.inputs, sample.targets)
            rows = [sample.inputs, sample.preds, sample.targets] if noisy else [sample.targets, sample.preds]
            names = "input / output / target" if noisy else "original / reconstruction"
            run.log({"val/reconstructions": reconstruction_grid(rows, f"rows: {names}")}, step=step)

    @torch.no_grad()
    def log_worst(self, model, val_loader, step: int, k: int = WORST_SLICES) -> list[dict[str, Any]]:
        """Segmentation: a ``wandb.Table`` (id, dice, true/pred pixels, masked image) of the ``k`` lowest-Dice
        validation slices of the final model. Call on every process; returns the table rows (main process).

        Per-image Dice comes from predictions gathered across processes (each slice once, dataset order);
        the ``k`` slices are then recomputed from ``val_data`` on every process and logged by the main one.
        """
        if not (self.enabled and self.segmentation):
            return []
        acc = self.acc
        model.eval()
        metric = SegmentationMetrics(self.threshold)
        for batch in val_loader:
            out = self.objective(model, batch)
            metric.update(*acc.gather_for_metrics((out.preds, out.targets)))
        scores = metric.per_image_scores()
        dice = scores["dice"]
        worst = torch.argsort(dice, stable=True)[:k].tolist()
        if not worst:
            return []
        items = default_collate([self.val_data[i] for i in worst])
        out = self.objective(model, [t.to(acc.device) for t in items])
        run = self._run()
        if run is None:
            return []
        import wandb

        ids = getattr(self.val_data, "ids", None)
        rows = []
        table = wandb.Table(columns=["id", "dice", "true_pixels", "pred_pixels", "image"])
        for j, i in enumerate(worst):
            row = {"id": str(ids[i]) if ids is not None else str(i), "dice": float(dice[i]),
                   "true_pixels": int(scores["tp"][i] + scores["fn"][i]),
                   "pred_pixels": int(scores["tp"][i] + scores["fp"][i])}
            image = masked_image(out.inputs[j], out.preds[j], out.targets[j], self.threshold,
                                 caption=f"{row['id']}: Dice {row['dice']:.3f}")
            table.add_data(row["id"], row["dice"], row["true_pixels"], row["pred_pixels"], image)
            rows.append(row)
        run.log({"val/worst_slices": table}, step=step)
        return rows
