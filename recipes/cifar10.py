"""CIFAR-10 classification (spec task 1): a CNN of Conv-BN-ReLU blocks within 500,000 parameters (ResNet-20 or fast).

    accelerate launch recipes/cifar10.py                                  # downloads CIFAR-10 into data/cifar10
    accelerate launch recipes/cifar10.py --data-dir ../shared/data/cifar10 --download false   # JPEG class folders (.tar.gz)
    accelerate launch --cpu --num_processes 1 --mixed_precision no recipes/cifar10.py \\
        --data-dir ../shared/data/cifar10 --max-minutes 20 --epochs 100 \\
        --model fast --batch-size 128 --lr 0.08 --label-smoothing 0.2 --crop-padding 2 --dropout 0 \\
        --whiten true --tta flip-translate --eval-every 4                 # a 20-minute CPU run: 87.4% (docs/cifar10.md)
    python recipes/cifar10.py --help                                      # every setting, default and unit

The history keeps the training loss and the test accuracy of every epoch, and best.pth
holds the weights of the epoch with the best test accuracy (the spec's protocol; CIFAR-10
has no validation split). To tune settings without looking at the test set, hold out
part of the training set with ``--val-from-train 5000``. Images stay uint8 until the
device, where they are normalised and, in training, cropped and flipped batch-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toolkit import Accuracy, ClassificationConfig, ConfigError, SaveCurve, Trainer, classification_objective
from toolkit import parse_config, run_recipe
from toolkit.data import CIFAR10_MEAN, CIFAR10_STD, Normalize, holdout_split, load_cifar10
from toolkit.models import check_param_budget, cifar_classifier, whiten_init_


WHITEN_IMAGES = 2000  # training images whose 3x3 patches initialise the first conv with --whiten


@dataclass
class CIFAR10Config(ClassificationConfig):
    """CIFAR-10 classification with a small residual CNN (spec task 1)."""

    data_dir: str = "data/cifar10"  # torchvision root (cifar-10-batches-py/), class folders (train|test/<class>/*.jpg) or their .tar.gz
    download: bool = True  # fetch CIFAR-10 with torchvision into data_dir when it holds none (needs a network)
    cache_dir: str = "data/cifar10-cache"  # folder for extracted archives, and decoded tensors when data_dir is read-only
    val_from_train: int = 0  # training images held out as the validation set (for tuning); 0 = validate on the test set
    model: str = "resnet"  # resnet (ResNet-20 style) | fast (plain 6-conv CNN, about 2.5x the training images/s on a CPU)
    width: int = 16  # resnet: channels of the first stage (then 2x, 4x); 16 = ResNet-20, 272,474 parameters
    depth: int = 3  # resnet: residual blocks per stage (network depth 6*depth+2: 3 = ResNet-20)
    widths: str = "32,64,128"  # fast: channels of its three stages, comma-separated; 32,64,128 = 288,746 parameters
    dropout: float = 0.1  # dropout probability before the classifier
    whiten: bool = False  # initialise the first conv by patch whitening of 2,000 random training images (seeded; airbench)
    label_smoothing: float = 0.1  # cross-entropy label smoothing, 0 = none
    epochs: int = 120  # passes over the training set
    batch_size: int = 256  # images per process per step
    optimizer: str = "sgd"  # adamw | sgd (Nesterov)
    lr: float = 0.2  # peak learning rate (SGD, batch 256)
    weight_decay: float = 5e-4  # L2 penalty on conv/linear weights (SGD), per step
    max_grad_norm: float = 0.0  # clip the global gradient L2 norm to this; 0 = no clipping
    num_workers: int = 0  # DataLoader worker processes (the data sit in memory as a tensor: 0 is fastest)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1 or self.depth < 1:
            raise ConfigError(f"width and depth must be >= 1, got {self.width} and {self.depth}")
        try:  # counted on the meta device: a huge width is refused before any memory is taken
            check_param_budget(lambda: cifar_classifier(self.model, self.width, self.depth, self.widths, 0.0),
                               self.param_budget, f"model {self.model} with these widths")
        except ConfigError:
            raise
        except ValueError as err:  # the model's own refusal of bad widths
            raise ConfigError(f"model/widths: {err}") from None
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.val_from_train < 0:
            raise ConfigError(f"val_from_train must be >= 0, got {self.val_from_train}")


def build_data(cfg: CIFAR10Config, trainer: Trainer):
    """(train, val) datasets of (image (3, 32, 32) uint8 0..255, label int64 0..9); val = test set by default."""
    acc = trainer.accelerator
    with acc.local_main_process_first():  # one download / extraction / decoding per machine
        try:
            train, test, source = load_cifar10(cfg.data_dir, download=cfg.download, cache_dir=cfg.cache_dir)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None
    val, val_name = test, "test"
    if cfg.val_from_train:
        if cfg.val_from_train >= len(train):
            raise ConfigError(f"val_from_train must be below the {len(train)} training images, got {cfg.val_from_train}")
        train, val = holdout_split(train, cfg.val_from_train, seed=cfg.seed)
        val_name = f"{len(val)} images held out of train"
    acc.print(f"data: CIFAR-10 ({source.kind} at {source.root}): train {len(train)}, validation = {val_name} "
              f"({len(val)})")
    return train, val


def whitening_images(train, seed: int, count: int = WHITEN_IMAGES) -> torch.Tensor:
    """(min(count, N), 3, 32, 32) uint8 images of ``train`` drawn at random by ``seed`` alone (the same on every
    process: the same initial weights). Not the first ones: class folders are read class by class, and the first
    2,000 of CIFAR-10's are all airplanes."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([train[int(i)][0] for i in order])


def main(argv=None) -> list[dict]:
    cfg = parse_config(CIFAR10Config, argv)
    trainer = Trainer(cfg, recipe="cifar10")
    trainer.keep_settings(("val_from_train", "seed"), "the images it trains and validates on would differ")
    train, val = build_data(cfg, trainer)
    model = cifar_classifier(cfg.model, cfg.width, cfg.depth, cfg.widths, cfg.dropout)
    normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    if cfg.whiten:
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        whiten_init_(first_conv, normalize(whitening_images(train, cfg.seed)))
    objective = classification_objective(cfg, preprocess=normalize)
    return trainer.fit(model, objective, train, val, metrics=[Accuracy()], monitor="accuracy", mode="max",
                       param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])


if __name__ == "__main__":
    run_recipe(main)
