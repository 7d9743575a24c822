"""STL-10 self-supervised pretraining (spec task 4): a conv encoder-decoder reconstructs the 100,000 unlabelled images.

    accelerate launch --config_file accelerate_config.yaml recipes/stl10_pretrain.py --data-dir data/stl10   # bf16, all GPUs
    accelerate launch --mixed_precision fp16 recipes/stl10_pretrain.py --epochs 10
    python recipes/stl10_pretrain.py --help

Mixed precision and the number of processes come from ``accelerate launch``. The
unlabelled images are read through a memory map shared by every process through the
page cache; ``val_images`` of them, drawn at random, are held out and scored (MSE,
PSNR) every epoch, and best.pth keeps the lowest validation MSE. Every epoch
``figures/reconstructions_epochNNN.png`` shows nine of those random held-out images
beside their reconstructions (logged to W&B); ``figures/reconstructions.png`` is the
one of the best epoch. ``recipes/stl10_probe.py`` then takes the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit import ConfigError, ReconstructionMedia, ReconstructionMetrics, ReconstructionObjective, TrainConfig
from toolkit import Trainer, atomic_write, parse_config, reconstruction_pairs
from toolkit.data import DataError, holdout_split, open_stl10
from toolkit.models import STL10AutoEncoder


@dataclass
class STL10PretrainConfig(TrainConfig):
    """STL-10 unlabelled-image reconstruction with a convolutional encoder-decoder (spec task 4)."""

    data_dir: str = "data/stl10"  # folder holding stl10_binary/ (or that folder itself); reads unlabeled_X.bin
    download: bool = False  # fetch STL-10 (2.6 GB) with torchvision into data_dir when missing (needs a network)
    channels: tuple[int, ...] = (24, 48, 64, 96)  # widths of the 4 strided convs (decoder mirrors them); 188,659 parameters
    max_images: int = 0  # use only the first N unlabelled images (quick runs); 0 = all 100,000
    val_images: int = 1000  # unlabelled images drawn at random and held out for validation and the figure
    param_budget: int = 220_000  # most trainable parameters (the spec asks for about 200,000)
    epochs: int = 30  # passes over the unlabelled training images
    batch_size: int = 256  # images per process per step
    lr: float = 2e-3  # peak AdamW learning rate
    num_workers: int = 4  # DataLoader worker processes per training process (they share the memory map)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"channels must be at least two positive widths, got {self.channels}")
        if 96 % 2 ** len(self.channels):
            raise ConfigError(f"channels: 96 must divide by 2^{len(self.channels)} (one stride-2 layer per width)")
        if self.max_images < 0 or self.val_images < 1:
            raise ConfigError(f"need max_images >= 0 and val_images >= 1, got {self.max_images}, {self.val_images}")


def split_unlabeled(dataset, val_images: int, seed: int):
    """(train, val) Subsets: ``val_images`` indices drawn at random (seeded), the rest, in file order, for training."""
    if val_images >= len(dataset):
        raise ConfigError(f"val_images must be below the {len(dataset)} unlabelled images, got {val_images}")
    return holdout_split(dataset, val_images, seed, sort_rest=True)


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10PretrainConfig, argv)
    trainer = Trainer(cfg, recipe="stl10_pretrain")
    acc = trainer.accelerator
    try:
        unlabeled = open_stl10(cfg.data_dir, ("unlabeled",), cfg.download, acc, limit=cfg.max_images)["unlabeled"]
    except DataError as err:  # a missing or malformed STL-10 file
        raise ConfigError(str(err)) from None
    train, val = split_unlabeled(unlabeled, cfg.val_images, cfg.seed)
    acc.print(f"data: STL-10 unlabelled at {unlabeled.images_path}: train {len(train)}, validation {len(val)} "
              f"(random, held out)")
    model = STL10AutoEncoder(cfg.channels)
    history = trainer.fit(model, ReconstructionObjective(), train, val, metrics=[ReconstructionMetrics()],
                          monitor="mse", mode="min", param_budget=cfg.param_budget,
                          figures=lambda s: {"reconstructions": reconstruction_pairs(s.targets, s.preds, 9)},
                          callbacks=[ReconstructionMedia()])
    if acc.is_main_process and history:  # the figure of the best weights under a fixed name
        best = min(history, key=lambda h: h["mse"])["epoch"]
        figures = trainer.figures_dir
        png = (figures / f"reconstructions_epoch{best:03d}.png").read_bytes()
        atomic_write(figures / "reconstructions.png", lambda f: f.write(png))
    return history


if __name__ == "__main__":
    main()
