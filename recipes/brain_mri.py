"""Brain-MRI tumour segmentation: a symmetric encoder-decoder trained with the soft Dice loss.

    accelerate launch recipes/brain_mri.py                      # built-in synthetic data
    accelerate launch recipes/brain_mri.py --data-dir DIR       # images/<id>.png + masks/<id>_mask.png
    accelerate launch recipes/brain_mri.py --data-dir A,B --folds 3 --fold 0   # two folders, fold 0 of 3
    make brain-mri-cv FOLDS=3 ARGS="--data-dir A,B"             # every fold, then out-of-fold scores
    python recipes/brain_mri.py --help                          # every setting, default and unit
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from toolkit import (
    MAX_AUGMENT_STRENGTH,
    MAX_CONTEXT,
    ChoosePostprocess,
    ChooseVolumePostprocess,
    ConfigError,
    FreezeEncoder,
    SegmentationMedia,
    SegmentationMetrics,
    SegmentationObjective,
    TARGET_KINDS,
    TargetMetrics,
    TrainConfig,
    Trainer,
    build_segmentation_model,
    check_mri_settings,
    check_param_budget,
    choose_monitor,
    context_channels,
    encoder_parameters,
    settle_epochs,
    init_from,
    input_difference,
    parse_config,
    parse_regions,
    parse_widths,
    run_recipe,
    segmentation_loss,
    segmentation_data,
    segmentation_overlays,
    size_multiple,
)
from toolkit.data import ForegroundCrop


@dataclass
class BrainMRIConfig(TrainConfig):
    """Brain-MRI tumour segmentation (spec task 5)."""

    data_dir: str = ""  # MRI data folder(s), comma-separated, each auto-detected: images/+masks/ (+metadata.csv), LGG kaggle_3m, figshare .mat, BraTS NIfTI; "" = synthetic
    channels: str = ""  # channels read: "" = as in_channels says (0: all; 1: grey, LGG/BraTS FLAIR; 3/4: all); or names/indices, e.g. "flair,t1ce"
    slice_rule: str = ""  # NIfTI volumes only (BraTS, raw layout): "" = nonempty (slices with brain) | tumour | tumour+N | all
    skip_bad_files: bool = False  # leave out unreadable or inconsistent files (listed in the log) instead of stopping
    synthetic_dir: str = "data/synthetic-mri"  # where the built-in synthetic slices are written
    synthetic_images: int = 400  # number of synthetic slices (10% without tumour)
    image_size: int = 240  # side of the square slices fed to the model, pixels
    in_channels: int = 0  # image channels: 0 = what the data has (every channel of LGG/BraTS/nnU-Net volumes, chosen on LGG validation; 1 grey for image folders); or a count
    context_slices: int = 0  # 2.5D: neighbouring slices on each side of a volume's slice (NIfTI cases, LGG folders) stacked as extra input channels; 0 = none
    val_fraction: float = 0.2  # share of patients (or id blocks) held out for validation (picks the best epoch); 0 = none: every patient trains, best.pth = the last epoch's weights, no post-processing chosen
    test_fraction: float = 0.0  # share of patients held out for a final test (`toolkit evaluate --split test`)
    split_block: int = 1  # data without patient ids only: consecutive ids kept on one side of a split
    folds: int = 0  # cross-validation: number of patient-safe folds (0 = one split by val_fraction); see make brain-mri-cv
    fold: int = 0  # with folds: the fold used for validation, 0..folds-1 (the others train)
    target: str = ""  # binary | classes | regions; "" = what the data declares (dataset.json regions, else labels, else binary)
    regions: str = ""  # with target regions: "name=1+2+3+4,name=1+3+4,..." label values per region; "" = the data's
    class_column: str = ""  # with target classes on binary masks: metadata column naming each slice's class, e.g. tumour_type
    model: str = "unet_s2d"  # unet_s2d (U-Net behind a lossless 2x2 space-to-depth stem: 1.8x faster training; chosen on validation, docs/brain-mri.md) | unet (symmetric, with skips, full-resolution first stage) | autoencoder (symmetric, no skips) | smp_unet (baseline)
    widths: str = ""  # stage widths of unet/unet_s2d/autoencoder, comma-separated channels, e.g. "8,16,32,64,128"; "" = that model's default (unet_s2d: 16,32,64,128)
    deep_supervision: bool = False  # nnU-Net's deep supervision: 1x1 heads on the coarser decoder stages (98 weights for unet_s2d), their losses weighted 2**-i (unet_s2d, unet, autoencoder; eval unchanged)
    init_from: str = ""  # start from these weights (a best.pth of the same model, widths and channels); "" = random init
    label_fraction: float = 1.0  # share of the TRAINING patients kept (0 < F <= 1; whole patients, drawn by seed); val/test unchanged
    freeze_encoder_epochs: int = 0  # epochs at the start during which the encoder (and bottleneck) weights stay fixed; 0 = none
    encoder_lr_scale: float = 1.0  # learning-rate factor of the encoder and bottleneck (x lr, schedule alike; e.g. 0.1 to keep --init-from features: discriminative fine-tuning); 1 = as the rest
    postprocess: bool = True  # after training, choose threshold / flip TTA / component rule on validation (postprocess.json)
    loss: str = "dice_bce"  # dice_bce (the spec's soft Dice + binary cross-entropy; chosen on validation, docs/brain-mri.md) | dice (soft Dice alone)
    bce_weight: float = 1.0  # weight of the BCE term with loss=dice_bce
    batch_dice: bool = False  # binary: soft Dice summed over each process's batch (one Dice per batch) instead of per image; classes/regions always
    threshold: float = 0.5  # probability above which a pixel counts as tumour
    monitor: str = ""  # validation figure that picks best.pth (and --patience): dice | iou (per image) | dice_global | iou_global (pixels pooled) | dice_tumour; "" = dice_global when >= 25% of the validation slices hold no tumour (LGG) or for classes/regions, else dice
    crop_size: int = 96  # side of the training patches, pixels (evaluation uses whole slices); 0 or >= image_size = whole slices
    foreground_p: float = 0.5  # with crop_size: share of patches centred on a tumour pixel (slices with tumour)
    augment: float = 1.0  # training augmentation strength, 0 (none) to 4: scales the zoom/rotation/shift/brightness/contrast/elastic ranges and their probabilities (toolkit.mri_augmentation)
    param_budget: int = 500_000  # most trainable parameters the model may have
    epochs: int = 0  # passes over the training set (an upper bound with --max-minutes); 0 = 155,000 training slices' worth (100 on figshare's 1,545 slices, where chosen; 508 on LGG's 305)
    eval_every: int = 3  # validate every N epochs and after the last (best.pth and patience follow it); 3 = as in the figshare runs that chose the other defaults (docs/brain-mri.md): more epochs inside --max-minutes
    batch_size: int = 16  # slices per process per step
    lr: float = 3e-3  # peak AdamW learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        check_mri_settings(self)  # data_dir, synthetic_images, slice_rule, image_size, in_channels, model, widths
        if self.target not in ("", *TARGET_KINDS):
            raise ConfigError(f"target must be '', {', '.join(TARGET_KINDS)}; got {self.target!r}")
        if self.regions:
            if self.target not in ("", "regions"):
                raise ConfigError(f"regions {self.regions!r} given with target {self.target!r}: --regions sets the "
                                  "channels of target regions only; drop it, or use --target regions")
            try:
                parse_regions(self.regions)
            except ValueError as err:
                raise ConfigError(f"regions: {err}") from None
        if self.class_column and self.target not in ("", "classes"):  # binary: masks 0/k would reach a binary loss
            raise ConfigError(f"class_column {self.class_column!r} given with target {self.target!r}: it gives each "
                              "slice's class to target classes only; drop it, or use --target classes")
        if self.loss not in ("dice", "dice_bce"):
            raise ConfigError(f"loss must be dice or dice_bce, got {self.loss!r}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 - self.val_fraction:
            raise ConfigError(f"need 0 <= val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction, "
                              f"got {self.val_fraction} and {self.test_fraction}")
        if not 0 <= self.context_slices <= MAX_CONTEXT:
            raise ConfigError(f"context_slices must be in [0, {MAX_CONTEXT}] (neighbours on each side), "
                              f"got {self.context_slices}")
        if self.crop_size and self.crop_size < 16:
            raise ConfigError(f"crop_size must be 0 (whole slices) or at least 16 pixels, got {self.crop_size}")
        if not 0 <= self.augment <= MAX_AUGMENT_STRENGTH:
            raise ConfigError(f"augment must be in [0, {MAX_AUGMENT_STRENGTH:g}] (0 = none, 1 = the default), "
                              f"got {self.augment}")
        if not 0 <= self.foreground_p <= 1:
            raise ConfigError(f"foreground_p must be in [0, 1], got {self.foreground_p}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1) (a tumour probability), got {self.threshold}")
        if self.bce_weight < 0:
            raise ConfigError(f"bce_weight must be >= 0, got {self.bce_weight}")
        if self.split_block < 1:
            raise ConfigError(f"split_block must be >= 1 (consecutive ids kept together), got {self.split_block}")
        if self.fold and not self.folds:
            raise ConfigError(f"fold {self.fold} given without folds: --fold picks the validation fold of "
                              "--folds K (>= 2); give both, or neither")
        if self.deep_supervision:
            check_deep_supervision(self)
        # with 1 channel and 1 output at least, on the meta device: a huge --widths never gets built
        check_param_budget(lambda: build_model(self, in_channels=max(1, self.in_channels)), self.param_budget,
                           f"model {self.model} with these widths and 1 channel in and out",
                           "give smaller --widths")
        if self.folds and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise ConfigError(f"need folds >= 2 and 0 <= fold < folds (or folds 0), got folds {self.folds}, "
                              f"fold {self.fold}")
        if self.init_from and not Path(self.init_from).is_file():
            raise ConfigError(f"init_from: {self.init_from!r} is not a file (expected a best.pth)")
        if not 0 < self.encoder_lr_scale < math.inf:  # NaN fails too
            raise ConfigError(f"encoder_lr_scale must be a finite factor > 0 (1 = the encoder learns at --lr), got "
                              f"{self.encoder_lr_scale}")
        if not 0 < self.label_fraction <= 1 or self.freeze_encoder_epochs < 0:
            raise ConfigError(f"need 0 < label_fraction <= 1 and freeze_encoder_epochs >= 0, got "
                              f"{self.label_fraction} and {self.freeze_encoder_epochs}")


def check_deep_supervision(cfg: BrainMRIConfig) -> None:
    """ConfigError unless ``cfg.model`` has auxiliary heads to give and its training side (``crop_size``, or
    ``image_size`` for whole slices) needs no padding: a multiple of 2**depth (x2 for ``unet_s2d``)."""
    if cfg.model == "smp_unet":
        raise ConfigError("deep_supervision applies to unet_s2d, unet and autoencoder, not to smp_unet")
    multiple = size_multiple(cfg.model, parse_widths(cfg.widths))
    field, side = ("crop_size", cfg.crop_size) if 0 < cfg.crop_size < cfg.image_size else ("image_size", cfg.image_size)
    if side % multiple:
        raise ConfigError(f"deep_supervision: the training side {side} px ({field}) must be a multiple of {multiple} for "
                          f"model {cfg.model} with widths {cfg.widths or 'the default'}, so that every head's output "
                          "lines up with the mask; e.g. --crop-size 96")


def build_model(cfg: BrainMRIConfig, out_channels: int = 1, in_channels: int = 0):
    """The configured segmentation model: (N, in_channels x (2 context_slices + 1), S, S) float → (N, out_channels,
    S, S) logits; ``in_channels`` 0: the config's."""
    return build_segmentation_model(cfg.model, in_channels=context_channels(in_channels or cfg.in_channels,
                                                                            cfg.context_slices),
                                    out_channels=out_channels,
                                    widths=parse_widths(cfg.widths), deep_supervision=cfg.deep_supervision)


def main(argv=None) -> list[dict]:
    cfg = parse_config(BrainMRIConfig, argv)
    trainer = Trainer(cfg, recipe="brain_mri")
    # split by patient; split.json and target.json in the run folder
    train, val, target, preprocess = segmentation_data(cfg, trainer)
    model = build_model(cfg, target.out_channels)
    if cfg.init_from:
        try:
            init_from(model, cfg.init_from)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        trainer.accelerator.print(f"init_from: started from the weights of {cfg.init_from}"
                                  + (" (resumed runs continue from their state)" if trainer.resuming else ""))
        if trainer.accelerator.is_main_process and (note := input_difference(cfg.init_from, trainer.run_dir)):
            print(f"init_from: note: {note}")  # main process: it wrote this run's split.json
    crop = ForegroundCrop(cfg.crop_size, cfg.foreground_p) if 0 < cfg.crop_size < cfg.image_size else None
    binary = target.kind == "binary"
    callbacks = [SegmentationMedia(cfg.threshold, target=target)]
    if cfg.freeze_encoder_epochs:  # the optimizer holds the encoder; it gets no gradient until then
        callbacks.append(FreezeEncoder(model, cfg.freeze_encoder_epochs))
    lr_scales = [(encoder_parameters(model), cfg.encoder_lr_scale)] if cfg.encoder_lr_scale != 1 else []
    trainer.keep_settings(("encoder_lr_scale",), "its optimizer state holds the encoder's learning rate it started with")
    monitor = choose_monitor(cfg.monitor, target, val, trainer.accelerator.print)
    if not len(val):
        trainer.accelerator.print("no validation (val_fraction 0): every patient trains and best.pth is the last "
                                  "epoch's weights; no post-processing is chosen (evaluate and predict apply "
                                  "--threshold, --flips, --one-region as given)")
    settle_epochs(cfg, trainer, len(train))
    plane = None  # the 2D search is binary: threshold, flips, components (volumes: in 3D)
    if cfg.postprocess and binary:
        callbacks.append(plane := ChoosePostprocess(lambda: build_model(cfg), val, preprocess,
                                                    pooled=monitor.endswith("_global"), threshold=cfg.threshold))
    if cfg.postprocess:  # volume data: 3D component rules per channel on the validation patients (after the 2D)
        callbacks.append(ChooseVolumePostprocess(lambda: build_model(cfg, target.out_channels), val, preprocess,
                                                 target, cfg.threshold, reuse=plane))
    metric = SegmentationMetrics(threshold=cfg.threshold) if binary else TargetMetrics(target, cfg.threshold)
    return trainer.fit(
        model, SegmentationObjective(segmentation_loss(target.kind, cfg.loss, cfg.bce_weight, cfg.batch_dice,
                                                       cfg.deep_supervision),
                                     preprocess, crop=crop, target=target), train, val if len(val) else None,
        metrics=[metric], monitor=monitor, mode="max", param_budget=cfg.param_budget,
        callbacks=callbacks, lr_scales=lr_scales,
        figures=lambda s: {"overlays": segmentation_overlays(
            s.inputs, *target.foreground(s.preds, s.targets, cfg.threshold), cfg.threshold)},
    )


if __name__ == "__main__":
    run_recipe(main)
