"""Self-supervised pretraining of the brain-MRI encoder-decoder: restoring corrupted slices (Models Genesis), or
segmenting synthetic lesions painted onto them (``--objective lesions``).

    accelerate launch recipes/brain_mri_pretrain.py --data-dir DIR                 # every slice of DIR
    accelerate launch recipes/brain_mri_pretrain.py --data-dir DIR --exclude-split runs/seg/split.json
    accelerate launch recipes/brain_mri.py --data-dir DIR --init-from runs/<pretrain run>/best.pth
    python recipes/brain_mri_pretrain.py --help                                     # every setting

The model is the one recipes/brain_mri.py builds (same --model, --widths, --in-channels; one output
channel), so its best.pth loads whole into a binary segmentation run with ``--init-from``. Each slice
(uint8 / 255, in [0, 1]) is corrupted on the device (local pixel shuffling, a Bezier intensity curve,
in- or out-painting, one probability each), brought to the segmentation model's input scale (per-slice
standardisation, or z-scores for NIfTI), and the model's sigmoid output is compared with the clean
slice in [0, 1] by MSE (with several channels: their mean). With ``--objective lesions`` the model
instead segments random lesions painted onto each slice (bright, dark or ring-enhancing blobs with bent
outlines and soft edges; ``toolkit.data.SyntheticLesions``), scored by soft Dice + BCE around each lesion
only (the slices' own, unlabelled tumours lie elsewhere); best.pth keeps the highest validation Dice of
the painted lesions. Masks are never read as targets. A patient-safe share ``val_fraction`` of the
patients is held out and scored every epoch (restoration: MSE, PSNR; best.pth keeps the lowest MSE). Test
patients' images should be left out of pretraining: ``--exclude-split`` drops every patient of that split
file's val and test lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit import (ConfigError, LesionObjective, ReconstructionMedia, ReconstructionMetrics, RestorationObjective,
                     SegmentationMetrics, TrainConfig, Trainer, build_segmentation_model, check_mri_settings,
                     check_param_budget, parse_config, parse_widths, pretraining_data, reconstruction_pairs, run_recipe,
                     segmentation_overlays)
from toolkit.data import Corrupt, SyntheticLesions, unit_input_scale


@dataclass
class BrainMRIPretrainConfig(TrainConfig):
    """Self-supervised pretraining of the brain-MRI segmentation model on unlabelled slices (issue 14)."""

    data_dir: str = ""  # MRI data folder(s), comma-separated, any layout recipes/brain_mri.py reads; "" = synthetic
    exclude_split: str = ""  # a run's split.json: leave out every patient of its val and test lists; "" = use all
    channels: str = ""  # channels read, as recipes/brain_mri.py: "" = in_channels of the source; or names/indices
    slice_rule: str = ""  # BraTS volumes only: "" = nonempty (slices with brain) | tumour | tumour+N | all
    skip_bad_files: bool = False  # leave out unreadable or inconsistent files instead of stopping
    synthetic_dir: str = "data/synthetic-mri"  # where the built-in synthetic slices are written
    synthetic_images: int = 400  # number of synthetic slices
    image_size: int = 240  # side of the square slices fed to the model, pixels
    in_channels: int = 0  # image channels: 0 = what the data has (every channel of LGG/BraTS/nnU-Net volumes, chosen on LGG validation; 1 grey for image folders); or a count
    val_fraction: float = 0.1  # share of patients (or ids) held out to score the pretraining task (picks best.pth)
    model: str = "unet_s2d"  # unet_s2d | unet | autoencoder | smp_unet, as recipes/brain_mri.py (same default)
    widths: str = ""  # stage widths of unet/unet_s2d/autoencoder, as recipes/brain_mri.py; "" = that model's default
    objective: str = "restoration"  # restoration (Models Genesis: restore corrupted slices) | lesions (segment synthetic lesions)
    shuffle_p: float = 0.5  # probability per slice of local pixel shuffling (probability, 0..1)
    shuffle_block: float = 0.05  # side of the shuffled tiles (fraction of the image side)
    nonlinear_p: float = 0.9  # probability per slice of the Bezier intensity curve (probability, 0..1)
    inpaint_p: float = 0.18  # probability per slice of in-painting (probability, 0..1; exclusive with out-painting)
    outpaint_p: float = 0.72  # probability per slice of out-painting (probability, 0..1; inpaint_p + outpaint_p <= 1)
    paint_boxes: int = 3  # boxes per in- or out-painted slice (count)
    lesions: int = 2  # objective lesions: most synthetic lesions per slice (count; each slice gets 1..lesions)
    lesion_sizes: str = "0.02,0.14"  # objective lesions: smallest,largest lesion radius (fractions of the slice side)
    ring_p: float = 0.3  # objective lesions: share of lesions drawn as a bright rim around a dark core (probability)
    dark_p: float = 0.2  # objective lesions: share of the other lesions drawn darker than the tissue (probability)
    roi_factor: float = 2.0  # objective lesions: the task is scored within this many lesion radii of each lesion
    param_budget: int = 500_000  # most trainable parameters the model may have
    epochs: int = 30  # passes over the unlabelled training slices
    batch_size: int = 16  # slices per process per step
    lr: float = 3e-3  # peak AdamW learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        check_mri_settings(self)  # data_dir, synthetic_images, slice_rule, image_size, in_channels, model, widths
        channels = max(1, self.in_channels)  # 0 (what the data has): at least 1, so a huge --widths is never built
        check_param_budget(lambda: self.build_model(channels), self.param_budget,
                           f"model {self.model} with these widths and {channels} input channel(s)",
                           "give smaller --widths")
        if self.exclude_split and not Path(self.exclude_split).is_file():
            raise ConfigError(f"exclude_split: {self.exclude_split!r} is not a file (expected a run's split.json)")
        if self.objective not in ("restoration", "lesions"):
            raise ConfigError(f"objective must be restoration or lesions, got {self.objective!r}")
        for what, build in (("corruption", self.corruption), ("lesion", self.synthetic_lesions)):
            try:
                build()
            except ValueError as err:
                raise ConfigError(f"{what} settings: {err}") from None

    def build_model(self, in_channels: int):
        """The encoder-decoder these settings describe: (N, in_channels, S, S) scans → (N, 1, S, S) restorations."""
        return build_segmentation_model(self.model, in_channels=in_channels, out_channels=1,
                                        widths=parse_widths(self.widths))

    def corruption(self) -> Corrupt:
        """The corruption chain these settings describe (seeded with ``seed``)."""
        return Corrupt(nonlinear_p=self.nonlinear_p, shuffle_p=self.shuffle_p, inpaint_p=self.inpaint_p,
                       outpaint_p=self.outpaint_p, shuffle_block=self.shuffle_block, boxes=self.paint_boxes,
                       seed=self.seed)

    def synthetic_lesions(self) -> SyntheticLesions:
        """The lesion painter these settings describe (seeded with ``seed``)."""
        try:
            low, high = (float(v) for v in self.lesion_sizes.split(","))
        except ValueError:
            raise ValueError(f"lesion_sizes must be two numbers 'low,high', got {self.lesion_sizes!r}") from None
        return SyntheticLesions(max_lesions=self.lesions, sizes=(low, high), ring_p=self.ring_p, dark_p=self.dark_p,
                                roi_factor=self.roi_factor, seed=self.seed)


def main(argv=None) -> list[dict]:
    cfg = parse_config(BrainMRIPretrainConfig, argv)
    trainer = Trainer(cfg, recipe="brain_mri_pretrain")
    train, val, intensity = pretraining_data(cfg, trainer)  # masks unused; split.json in the run folder
    model = cfg.build_model(cfg.in_channels)
    scale = unit_input_scale(intensity)
    if cfg.objective == "lesions":  # the Dice of the painted lesions picks best.pth
        return trainer.fit(model, LesionObjective(cfg.synthetic_lesions(), model_scale=scale), train, val,
                           metrics=[SegmentationMetrics()], monitor="dice", mode="max", param_budget=cfg.param_budget,
                           figures=lambda s: {"lesions": segmentation_overlays(s.inputs, s.preds, s.targets)})
    objective = RestorationObjective(cfg.corruption(), model_scale=scale)
    return trainer.fit(model, objective, train, val, metrics=[ReconstructionMetrics()], monitor="mse", mode="min",
                       param_budget=cfg.param_budget, callbacks=[ReconstructionMedia()],
                       figures=lambda s: {"restorations": reconstruction_pairs(s.targets, s.preds, 9)})


if __name__ == "__main__":
    run_recipe(main)
