"""W&B media beyond the PNG figures: mask overlays, reconstruction grids, the worst validation slices.

Fit callbacks (see :mod:`toolkit.callbacks`) that a recipe passes to ``Trainer.fit``:
:class:`SegmentationMedia` logs each epoch's first validation images as ``wandb.Image`` with
W&B's interactive mask overlays (``prediction`` and ``ground_truth``, toggled in the W&B UI),
and at the end of training a ``wandb.Table`` of the validation slices with the lowest Dice.
:class:`ReconstructionMedia` logs a grid per epoch: rows of inputs, outputs, targets.
Both do nothing when W&B is disabled.

Only the main process talks to W&B; the worst-slices pass runs on every process because
it gathers the per-image Dice across processes (``gather_for_metrics``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from .callbacks import Callback
from .figures import display_channels
from .metrics import SegmentationMetrics
from .targets import TargetSpec
from .tracking import wandb_run

__all__ = ["SegmentationMedia", "ReconstructionMedia", "display_uint8", "masked_image", "reconstruction_grid",
           "CLASS_LABELS"]

CLASS_LABELS = {0: "background", 1: "tumour"}
EPOCH_IMAGES = 6  # validation images with mask overlays logged per epoch
WORST_SLICES = 12  # rows of the worst-validation-slices table


def display_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float of any range → uint8 (H, W) grey or (H, W, 3) RGB, as the figures show scans.

    C == 3 is shown as RGB; any other C (1, 2, 4, ...) as channel 0 in grey (BraTS ``flair,t1ce`` or all
    four modalities: FLAIR). Min-max scaled per image to 0..255.
    """
    img = display_channels(image.detach().float().cpu())
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    arr = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def masked_image(image: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, threshold: float,
                 caption: str = ""):
    """``wandb.Image`` of a scan with W&B mask overlays of the prediction and the truth.

    image: (C, H, W) float (any range), shown as :func:`display_uint8` shows it (C == 3: RGB; any other C:
    channel 0 in grey); prob: (1, H, W) probabilities in [0, 1]; mask: (1, H, W) in {0, 1}.
    The prediction is ``prob >= threshold``; masks are uint8 class ids.
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

    Values are clipped to [0, 1], not rescaled, so the rows compare honestly; C == 3 is shown as RGB, any
    other C as channel 0 in grey. Uses min(max_images, N) columns.
    """
    import wandb
    from torchvision.utils import make_grid

    n = min(max_images, rows[0].shape[0])
    tiles = torch.cat([r[:n, :3 if r.shape[1] == 3 else 1].detach().float().cpu().clamp(0, 1) for r in rows])
    grid = make_grid(tiles, nrow=n, padding=2, pad_value=1.0)
    arr = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return wandb.Image(arr, caption=caption)


def _run(trainer):
    """The live W&B run on the main process of a fit with W&B on, else None."""
    return wandb_run(trainer.accelerator) if trainer.cfg.wandb_mode != "disabled" else None


class SegmentationMedia(Callback):
    """W&B media of a segmentation fit: mask overlays per epoch, the worst validation slices at the end.

    threshold: probability in (0, 1) at which a pixel counts as tumour (use the metric's);
    images: validation images logged per epoch; worst: rows of the worst-slices table;
    target: the run's :class:`~toolkit.targets.TargetSpec` (default binary): with classes or regions
    the media show tumour of any class/region (``target.foreground``).
    The objective's outputs must be probabilities ``preds`` (N, out_channels, H, W) in [0, 1], label
    maps ``targets`` (N, 1, H, W) ({0, 1} for binary) and scans ``inputs`` (N, C, H, W).
    """

    def __init__(self, threshold: float = 0.5, images: int = EPOCH_IMAGES, worst: int = WORST_SLICES,
                 target: TargetSpec | None = None) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"SegmentationMedia threshold must be in (0, 1), got {threshold}")
        self.threshold, self.images, self.worst = threshold, images, worst
        self.target = target if target is not None else TargetSpec.binary()

    def _views(self, preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.target.foreground(preds, targets, self.threshold)

    def on_epoch_end(self, trainer, state, record, sample) -> None:
        """Main process: the first validation images with prediction / truth overlays as ``val/segmentation``."""
        run = _run(trainer)
        if run is None or sample is None:
            return
        n = min(self.images, sample.inputs.shape[0])
        preds, targets = self._views(sample.preds, sample.targets)
        images = [masked_image(sample.inputs[i], preds[i], targets[i], self.threshold,
                               caption=f"validation image {i}") for i in range(n)]
        run.log({"val/segmentation": images}, step=state.global_step)

    def on_fit_end(self, trainer, state) -> None:
        self.log_worst(trainer, state.global_step)

    @torch.no_grad()
    def log_worst(self, trainer, step: int) -> list[dict[str, Any]]:
        """A ``wandb.Table`` (id, dice, true/pred pixels, masked image) of the lowest-Dice validation slices
        of the final model. Call on every process; returns the table rows (main process).

        Per-image Dice comes from predictions gathered across processes (each slice once, dataset order);
        the worst slices are then recomputed from the validation dataset on every process and logged by
        the main one.
        """
        acc, loop = trainer.accelerator, trainer.loop
        if trainer.cfg.wandb_mode == "disabled" or loop.val_dl is None:  # no validation set: nothing to rank
            return []
        model, objective, val_data = loop.eval_model, loop.objective, loop.val_data
        model.eval()
        metric = SegmentationMetrics(self.threshold)
        for batch in loop.val_dl:
            out = objective(model, batch)
            metric.update(*self._views(*acc.gather_for_metrics((out.preds, out.targets))))
        scores = metric.per_image_scores()
        dice = scores["dice"]
        worst = torch.argsort(dice, stable=True)[:self.worst].tolist()
        if not worst:
            return []
        items = default_collate([val_data[i] for i in worst])
        out = objective(model, [t.to(acc.device) for t in items])
        worst_preds, worst_targets = self._views(out.preds, out.targets)
        run = _run(trainer)
        if run is None:
            return []
        import wandb

        ids = getattr(val_data, "ids", None)
        rows = []
        table = wandb.Table(columns=["id", "dice", "true_pixels", "pred_pixels", "image"])
        for j, i in enumerate(worst):
            row = {"id": str(ids[i]) if ids is not None else str(i), "dice": float(dice[i]),
                   "true_pixels": int(scores["tp"][i] + scores["fn"][i]),
                   "pred_pixels": int(scores["tp"][i] + scores["fp"][i])}
            image = masked_image(out.inputs[j], worst_preds[j], worst_targets[j], self.threshold,
                                 caption=f"{row['id']}: Dice {row['dice']:.3f}")
            table.add_data(row["id"], row["dice"], row["true_pixels"], row["pred_pixels"], image)
            rows.append(row)
        run.log({"val/worst_slices": table}, step=step)
        return rows


class ReconstructionMedia(Callback):
    """W&B grid per epoch of a reconstruction or denoising fit, as ``val/reconstructions``.

    Rows: input / output / target when the inputs differ from the targets (denoising), else
    original / reconstruction; ``preds`` and ``targets`` (N, C, H, W) in [0, 1], clipped, not
    rescaled. images: columns of the grid.
    """

    def __init__(self, images: int = 8) -> None:
        self.images = images

    def on_epoch_end(self, trainer, state, record, sample) -> None:
        run = _run(trainer)
        if run is None or sample is None:
            return
        noisy = not torch.equal(sample.inputs, sample.targets)
        rows = [sample.inputs, sample.preds, sample.targets] if noisy else [sample.targets, sample.preds]
        names = "input / output / target" if noisy else "original / reconstruction"
        grid = reconstruction_grid(rows, f"rows: {names}", max_images=self.images)
        run.log({"val/reconstructions": grid}, step=state.global_step)
