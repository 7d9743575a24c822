"""Load a trained segmentation run and predict masks, for the `toolkit evaluate|predict` commands."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import load_weights
from .data.batch_transforms import standardize_per_image
from .models.segmentation import build_segmentation_model

__all__ = ["load_segmentation_run", "predict_probs", "largest_component", "evaluate_segmentation",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def load_segmentation_run(weights: str | Path) -> tuple[torch.nn.Module, dict]:
    """Model and recipe config of a segmentation run from its ``best.pth``.

    The architecture comes from ``config.json`` beside the weights (written by every run);
    the weights load with ``weights_only=True``. Returns (model in eval mode, config dict).
    """
    weights = Path(weights)
    config_path = weights.parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --weights must be a best.pth inside a run folder")
    cfg = json.loads(config_path.read_text())
    if "model" not in cfg or "image_size" not in cfg:
        raise ValueError(f"{config_path} is not the config of a segmentation run (recipe {cfg.get('recipe')!r})")
    model = build_segmentation_model(cfg["model"], in_channels=cfg.get("in_channels", 1))
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the model {cfg['model']!r} of {config_path}: {err}") from err
    return model.eval(), cfg


@torch.no_grad()
def predict_probs(model: torch.nn.Module, image: np.ndarray, size: int, flips: bool = False) -> np.ndarray:
    """Tumour probabilities (H, W) float32 in [0, 1] at the image's own size.

    image: uint8 (H, W, C). The scan is resized to ``size`` x ``size`` as in training,
    standardised per image, and the probabilities are resized back (bilinear).
    ``flips`` averages with the horizontally flipped prediction (test-time augmentation).
    """
    h, w = image.shape[:2]
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[..., None]
    x = standardize_per_image(torch.from_numpy(resized).permute(2, 0, 1)[None])
    probs = torch.sigmoid(model(x).float())
    if flips:
        probs = 0.5 * (probs + torch.sigmoid(model(x.flip(-1)).float()).flip(-1))
    return cv2.resize(probs[0, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected region of a binary (H, W) mask (uint8/bool); returns uint8 {0, 1}.

    Post-processing for data where a slice holds one tumour region (figshare).
    """
    mask = mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == keep).astype(np.uint8)


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, dataset, threshold: float = 0.5, flips: bool = False,
                          batch_size: int = 16, one_region: bool = False) -> tuple[list[dict], dict]:
    """Per-image and global Dice/IoU of ``model`` on ``dataset`` at the training resolution.

    ``dataset`` yields (uint8 image (C, S, S), uint8 mask (1, S, S) in {0, 1}) and has ``ids``.
    ``one_region`` keeps only the largest predicted region per slice (:func:`largest_component`).
    Returns (one record per image: id, dice, iou, true and predicted tumour pixels;
    the :class:`~toolkit.metrics.SegmentationMetrics` summary).
    """
    from .metrics import SegmentationMetrics

    metrics = SegmentationMetrics(threshold=threshold)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    for images, masks in loader:
        x = standardize_per_image(images)
        probs = torch.sigmoid(model(x).float())
        if flips:
            probs = 0.5 * (probs + torch.sigmoid(model(x.flip(-1)).float()).flip(-1))
        if one_region:
            binary = (probs >= threshold).to(torch.uint8).numpy()
            probs = torch.from_numpy(np.stack([largest_component(m[0])[None] for m in binary]))
        metrics.update(probs, masks)
    scores = metrics.per_image_scores()
    records = [
        {"id": str(i), "dice": float(d), "iou": float(u), "true_pixels": int(tp + fn), "pred_pixels": int(tp + fp)}
        for i, d, u, tp, fp, fn in zip(dataset.ids, scores["dice"], scores["iou"], scores["tp"], scores["fp"],
                                       scores["fn"])
    ]
    return records, metrics.compute()
