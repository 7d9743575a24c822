"""STL-10 self-supervised pretraining (spec task 4): a conv encoder-decoder learns from unlabelled images.

    accelerate launch --config_file accelerate_config.yaml recipes/stl10_pretrain.py --data-dir data/stl10   # bf16, all GPUs
    accelerate launch --mixed_precision fp16 recipes/stl10_pretrain.py --epochs 10
    accelerate launch --cpu --num_processes 1 --mixed_precision no recipes/stl10_pretrain.py \\
        --dataset cifar10 --data-dir ../shared/data/cifar10 --max-minutes 10   # the real-image check (CIFAR-10)
    python recipes/stl10_pretrain.py --help

``--dataset stl10`` (default) reads STL-10's 100,000 unlabelled 96x96 images through a memory
map shared by every process through the page cache; ``--dataset cifar10`` takes CIFAR-10's
50,000 32x32 training images (any layout recipes/cifar10.py reads) with their labels dropped.
``val_images`` of them, drawn at random, are held out and scored (MSE, PSNR) every epoch
(every ``--eval-every`` epochs and the last), and best.pth keeps the lowest validation MSE.
``--objective``: reconstruction (the model sees the clean image), denoising (Gaussian noise of
std ``noise_std`` added on the device) or restoration (the Models-Genesis corruption chain with
its default probabilities, seeded with ``seed``; the decoder's final Sigmoid is applied by the
objective, so the saved weights and parameter count are the same). Mixed precision and the
number of processes come from ``accelerate launch``. At each new best epoch and the last,
``figures/reconstructions_epochNNN.png`` shows nine of those random held-out images beside
their reconstructions (logged to W&B); ``figures/reconstructions.png`` is the one of the best
epoch. ``recipes/stl10_probe.py`` then takes the encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn as nn

from toolkit import ConfigError, DenoisingObjective, ReconstructionMedia, ReconstructionMetrics, ReconstructionObjective
from toolkit import RestorationObjective, TrainConfig, Trainer, atomic_write, parse_config, reconstruction_pairs
from toolkit import run_recipe
from toolkit.data import DEFAULT_NOISE_STD, Corrupt, DataError, holdout_split, load_cifar10, open_stl10
from toolkit.models import STL10AutoEncoder, check_param_budget

#: --dataset -> (image side in pixels, default data_dir)
DATASETS = {"stl10": (96, "data/stl10"), "cifar10": (32, "data/cifar10")}
OBJECTIVE_NAMES = ("reconstruction", "denoising", "restoration")


@dataclass
class ImageSourceConfig:
    """Which images the STL-10 pretraining and probe recipes read (``--dataset``, ``--data-dir``)."""

    dataset: str = "stl10"  # stl10 (96x96 STL-10 binaries) | cifar10 (32x32 CIFAR-10, the real-image check)
    data_dir: str = ""  # "" = data/stl10 | data/cifar10; stl10: folder holding stl10_binary/; cifar10: torchvision root, class folders or their .tar.gz
    download: bool = False  # fetch the data set with torchvision into data_dir when missing (needs a network)
    cache_dir: str = "data/cifar10-cache"  # cifar10: folder for the extracted archive and the decoded tensors

    def check_source(self) -> None:
        """Refuse an unknown ``dataset`` (ConfigError) and fill in the default ``data_dir``."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        self.data_dir = self.data_dir or DATASETS[self.dataset][1]

    @property
    def image_size(self) -> int:
        """Side of the square images of ``dataset``, pixels (96 or 32)."""
        return DATASETS[self.dataset][0]

    def open_cifar10(self, accelerator):
        """(train, test) CIFARTensorDatasets (items: image (3, 32, 32) uint8, label int64 0..9), decoded once
        per machine; a missing or malformed copy is a ConfigError naming it."""
        with accelerator.local_main_process_first():  # one extraction / decoding per machine
            try:
                train, test, source = load_cifar10(self.data_dir, download=self.download, cache_dir=self.cache_dir)
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"data_dir {self.data_dir}: {err}") from None
        accelerator.print(f"data: CIFAR-10 ({source.kind} at {source.root})")
        return train, test


@dataclass
class STL10PretrainConfig(ImageSourceConfig, TrainConfig):
    """Self-supervised pretraining of a convolutional encoder-decoder on unlabelled STL-10 or CIFAR-10 images."""

    objective: str = "reconstruction"  # reconstruction | denoising | restoration (Models-Genesis corruptions)
    noise_std: float = DEFAULT_NOISE_STD  # denoising: std of the Gaussian noise, pixels in [0, 1]
    channels: tuple[int, ...] = (24, 48, 64, 96)  # widths of the 4 strided convs (decoder mirrors them); 188,659 parameters
    max_images: int = 0  # use only N unlabelled images (quick runs): stl10 the first N, cifar10 N drawn at random (seeded); 0 = all
    val_images: int = 1000  # unlabelled images drawn at random and held out for validation and the figure
    param_budget: int = 220_000  # most trainable parameters (the spec asks for about 200,000)
    epochs: int = 30  # passes over the unlabelled training images
    batch_size: int = 256  # images per process per step
    lr: float = 2e-3  # peak AdamW learning rate
    num_workers: int = 4  # DataLoader worker processes per training process (they share the memory map)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_source()
        if self.objective not in OBJECTIVE_NAMES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got {self.objective!r}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"channels must be at least two positive widths, got {self.channels}")
        if self.image_size % 2 ** len(self.channels):
            raise ConfigError(f"channels: {self.image_size} ({self.dataset}) must divide by 2^{len(self.channels)} "
                              f"(one stride-2 layer per width)")
        if self.max_images < 0 or self.val_images < 1:
            raise ConfigError(f"need max_images >= 0 and val_images >= 1, got {self.max_images}, {self.val_images}")
        check_param_budget(lambda: STL10AutoEncoder(self.channels), self.param_budget,  # on the meta device
                           f"STL10AutoEncoder with channels {tuple(self.channels)}", "give smaller --channels")


def split_unlabeled(dataset, val_images: int, seed: int):
    """(train, val) Subsets: ``val_images`` indices drawn at random (seeded), the rest, in file order, for training."""
    if val_images >= len(dataset):
        raise ConfigError(f"val_images must be below the {len(dataset)} unlabelled images, got {val_images}")
    return holdout_split(dataset, val_images, seed, sort_rest=True)


def unlabeled_images(cfg: STL10PretrainConfig, accelerator):
    """The unlabelled image set: items (image (3, S, S) uint8 0..255, label -1), S = ``cfg.image_size``."""
    if cfg.dataset == "cifar10":
        train, _ = cfg.open_cifar10(accelerator)
        if 0 < cfg.max_images < len(train):  # the class folders are read class by class: draw, do not cut
            _, train = holdout_split(train, cfg.max_images, cfg.seed)
        return type(train)(train.images, torch.full((len(train),), -1, dtype=torch.long), train.classes)
    try:
        return open_stl10(cfg.data_dir, ("unlabeled",), cfg.download, accelerator, limit=cfg.max_images)["unlabeled"]
    except DataError as err:  # a missing or malformed STL-10 file
        raise ConfigError(str(err)) from None


def build_objective(cfg: STL10PretrainConfig, model: STL10AutoEncoder):
    """The ``cfg.objective`` objective; for restoration the decoder's Sigmoid moves into the objective."""
    if cfg.objective == "denoising":
        return DenoisingObjective(cfg.noise_std)
    if cfg.objective == "restoration":
        model.decoder[-1] = nn.Identity()  # RestorationObjective applies the sigmoid; no parameters change
        return RestorationObjective(Corrupt(seed=cfg.seed))
    return ReconstructionObjective()


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10PretrainConfig, argv)
    trainer = Trainer(cfg, recipe="stl10_pretrain")
    trainer.keep_settings(("dataset", "max_images", "val_images", "seed"),
                          "the images it trains and validates on would differ")
    acc = trainer.accelerator
    unlabeled = unlabeled_images(cfg, acc)
    train, val = split_unlabeled(unlabeled, cfg.val_images, cfg.seed)
    acc.print(f"data: {cfg.dataset} unlabelled images ({cfg.image_size}x{cfg.image_size}) from {cfg.data_dir}: "
              f"train {len(train)}, validation {len(val)} (random, held out); objective {cfg.objective}")
    model = STL10AutoEncoder(cfg.channels)
    objective = build_objective(cfg, model)
    history = trainer.fit(model, objective, train, val, metrics=[ReconstructionMetrics()],
                          monitor="mse", mode="min", param_budget=cfg.param_budget,
                          figures=lambda s: {"reconstructions": reconstruction_pairs(s.targets, s.preds, 9)},
                          callbacks=[ReconstructionMedia()])
    # the figure of the best weights under a fixed name; best_epoch is the Trainer's (with --eval-every N
    # only every N-th epoch's record holds an mse)
    best = json.loads((trainer.run_dir / "summary.json").read_text())["best_epoch"] if acc.is_main_process else None
    if best is not None:
        figures = trainer.figures_dir
        png = (figures / f"reconstructions_epoch{best:03d}.png").read_bytes()
        atomic_write(figures / "reconstructions.png", lambda f: f.write(png))
    return history


if __name__ == "__main__":
    run_recipe(main)
