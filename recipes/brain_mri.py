"""Brain-MRI tumour segmentation: a symmetric encoder-decoder trained with the soft Dice loss.

    accelerate launch recipes/brain_mri.py                      # built-in synthetic data
    accelerate launch recipes/brain_mri.py --data-dir DIR       # images/<id>.png + masks/<id>_mask.png
    python recipes/brain_mri.py --help                          # every setting, default and unit
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit import (
    DiceBCELoss,
    MRISegmentationDataset,
    SegmentationMetrics,
    SegmentationObjective,
    SoftDiceLoss,
    TrainConfig,
    Trainer,
    build_segmentation_model,
    find_image_mask_pairs,
    generate_synthetic_mri,
    mri_train_transforms,
    parse_config,
    segmentation_overlays,
    split_ids,
)
from toolkit.checkpoint import save_json
from toolkit.config import ConfigError


@dataclass
class BrainMRIConfig(TrainConfig):
    """Brain-MRI tumour segmentation (spec task 5)."""

    data_dir: str = ""  # folder with images/ and masks/; "" = generate the built-in synthetic set
    synthetic_dir: str = "data/synthetic-mri"  # where the built-in synthetic slices are written
    synthetic_images: int = 400  # number of synthetic slices (10% without tumour)
    image_size: int = 240  # side of the square slices fed to the model, pixels
    in_channels: int = 1  # image channels read (1 = grey, 3 = RGB)
    val_fraction: float = 0.2  # share of slices held out for validation (picks the best epoch)
    test_fraction: float = 0.0  # share of slices held out for a final test (`toolkit evaluate --split test`)
    split_block: int = 1  # consecutive ids kept on one side of a split (figshare ids run in patient order: 20)
    model: str = "unet"  # unet (symmetric, with skips) | autoencoder (symmetric, no skips) | smp_unet (baseline)
    loss: str = "dice"  # dice (soft Dice, spec formula) | dice_bce (soft Dice + binary cross-entropy)
    bce_weight: float = 1.0  # weight of the BCE term with loss=dice_bce
    threshold: float = 0.5  # probability above which a pixel counts as tumour
    param_budget: int = 500_000  # most trainable parameters the model may have
    epochs: int = 30  # passes over the training set
    batch_size: int = 16  # slices per process per step
    lr: float = 3e-3  # peak AdamW learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in ("unet", "autoencoder", "smp_unet"):
            raise ConfigError(f"model must be unet, autoencoder or smp_unet, got {self.model!r}")
        if self.loss not in ("dice", "dice_bce"):
            raise ConfigError(f"loss must be dice or dice_bce, got {self.loss!r}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1 - self.val_fraction:
            raise ConfigError(f"need 0 < val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction, "
                              f"got {self.val_fraction} and {self.test_fraction}")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir {self.data_dir!r} is not a folder")


def build_data(cfg: BrainMRIConfig, trainer: Trainer):
    """Train and validation datasets of (uint8 image (C,S,S), uint8 mask (1,S,S)) pairs."""
    root = Path(cfg.data_dir) if cfg.data_dir else Path(cfg.synthetic_dir)
    if not cfg.data_dir:
        with trainer.accelerator.local_main_process_first():  # one writer per machine
            if trainer.accelerator.is_local_main_process:
                generate_synthetic_mri(root, num_images=cfg.synthetic_images, seed=cfg.seed)
    pairs = find_image_mask_pairs(root)
    ids, split = [p[0] for p in pairs], {}
    if cfg.test_fraction > 0:
        ids, split["test"] = split_ids(ids, cfg.test_fraction, seed=cfg.seed + 1, block_size=cfg.split_block)
    train_ids, val_ids = split_ids(ids, cfg.val_fraction / (1 - cfg.test_fraction), seed=cfg.seed,
                                   block_size=cfg.split_block)
    split.update(train=train_ids, val=val_ids)
    if trainer.accelerator.is_main_process:
        save_json(trainer.run_dir / "split.json", {"data_dir": str(root.resolve()), **split})
    by_id = {p[0]: p for p in pairs}
    common = {"size": cfg.image_size, "in_channels": cfg.in_channels}
    train = MRISegmentationDataset([by_id[i] for i in train_ids], transform=mri_train_transforms(), **common)
    val = MRISegmentationDataset([by_id[i] for i in val_ids], **common)
    return train, val


def main(argv=None) -> list[dict]:
    cfg = parse_config(BrainMRIConfig, argv)
    trainer = Trainer(cfg, recipe="brain_mri")
    train, val = build_data(cfg, trainer)
    model = build_segmentation_model(cfg.model, in_channels=cfg.in_channels)
    loss = SoftDiceLoss() if cfg.loss == "dice" else DiceBCELoss(bce_weight=cfg.bce_weight)
    return trainer.fit(
        model, SegmentationObjective(loss), train, val,
        metrics=[SegmentationMetrics(threshold=cfg.threshold)], monitor="dice", mode="max",
        param_budget=cfg.param_budget,
        figures=lambda s: {"overlays": segmentation_overlays(s.inputs, s.preds, s.targets, cfg.threshold)},
    )


if __name__ == "__main__":
    main()
