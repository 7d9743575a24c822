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
    generate_synthetic_mri,
    mri_train_transforms,
    parse_config,
    segmentation_overlays,
)
from toolkit.config import ConfigError
from toolkit.data.batch_transforms import ForegroundCrop
from toolkit.data.mri.discover import discover_mri_slices
from toolkit.data.splits import save_split, split_records
from toolkit.wandb_media import SegmentationMedia


@dataclass
class BrainMRIConfig(TrainConfig):
    """Brain-MRI tumour segmentation (spec task 5)."""

    data_dir: str = ""  # MRI data, layout auto-detected: images/+masks/, LGG kaggle_3m, figshare .mat, BraTS NIfTI; "" = synthetic
    channels: str = ""  # channels read: "" = in_channels of the source (1: grey, LGG/BraTS FLAIR; 3/4: all); or names/indices, e.g. "flair,t1ce"
    slice_rule: str = ""  # BraTS volumes only: "" = nonempty (slices with brain) | tumour | tumour+N | all
    skip_bad_files: bool = False  # leave out unreadable or inconsistent files (listed in the log) instead of stopping
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
    crop_size: int = 0  # side of the training patches, pixels (evaluation uses whole slices); 0 = whole slices
    foreground_p: float = 0.5  # with crop_size: share of patches centred on a tumour pixel (slices with tumour)
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
        if self.crop_size and not 16 <= self.crop_size <= self.image_size:
            raise ConfigError(f"crop_size must be 0 or between 16 and image_size={self.image_size}, got {self.crop_size}")
        if not 0 <= self.foreground_p <= 1:
            raise ConfigError(f"foreground_p must be in [0, 1], got {self.foreground_p}")
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir {self.data_dir!r} is not a folder")


def build_data(cfg: BrainMRIConfig, trainer: Trainer):
    """Train and validation datasets of (uint8 image (C,S,S), uint8 mask (1,S,S)) pairs."""
    root = Path(cfg.data_dir) if cfg.data_dir else Path(cfg.synthetic_dir)
    if not cfg.data_dir:
        with trainer.accelerator.local_main_process_first():  # one writer per machine
            if trainer.accelerator.is_local_main_process:
                generate_synthetic_mri(root, num_images=cfg.synthetic_images, seed=cfg.seed)
    found = discover_mri_slices(root, channels=cfg.channels or cfg.in_channels, slice_rule=cfg.slice_rule or None,
                                skip_bad_files=cfg.skip_bad_files)
    if found.slices[0].num_channels != cfg.in_channels:
        raise ConfigError(f"channels={cfg.channels!r} reads {found.slices[0].num_channels} channel(s) of the "
                          f"{found.source} data; set --in-channels {found.slices[0].num_channels}")
    split = split_records(found.slices, cfg.val_fraction, cfg.test_fraction, seed=cfg.seed,
                          block_size=cfg.split_block)
    if trainer.accelerator.is_main_process:
        save_split(trainer.run_dir / "split.json", split, data_dir=root.resolve(), source=found.source)
    common = {"size": cfg.image_size, "skip_bad_files": cfg.skip_bad_files}
    train = MRISegmentationDataset(split["train"], transform=mri_train_transforms(), **common)
    val = MRISegmentationDataset(split["val"], **common)
    skipped = found.skipped + train.skipped + val.skipped
    units = f"{len(found.patients)} patients" if found.patients else f"no patient ids: blocks of {cfg.split_block}"
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.items())
    trainer.accelerator.print(f"data: {found.source} at {found.root}: {len(found.slices)} slices, {units}; {sizes}")
    if skipped:
        trainer.accelerator.print(f"skipped {len(skipped)} bad file(s): "
                                  + "; ".join(f"{p} ({why})" for p, why in skipped[:10]))
    return train, val


def main(argv=None) -> list[dict]:
    cfg = parse_config(BrainMRIConfig, argv)
    trainer = Trainer(cfg, recipe="brain_mri")
    train, val = build_data(cfg, trainer)
    model = build_segmentation_model(cfg.model, in_channels=cfg.in_channels)
    loss = SoftDiceLoss() if cfg.loss == "dice" else DiceBCELoss(bce_weight=cfg.bce_weight)
    crop = ForegroundCrop(cfg.crop_size, cfg.foreground_p) if cfg.crop_size else None
    return trainer.fit(
        model, SegmentationObjective(loss, crop=crop), train, val,
        metrics=[SegmentationMetrics(threshold=cfg.threshold)], monitor="dice", mode="max",
        param_budget=cfg.param_budget, callbacks=[SegmentationMedia(cfg.threshold)],
        figures=lambda s: {"overlays": segmentation_overlays(s.inputs, s.preds, s.targets, cfg.threshold)},
    )


if __name__ == "__main__":
    main()
