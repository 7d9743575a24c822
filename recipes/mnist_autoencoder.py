"""MNIST autoencoders (spec task 2): reconstruction or denoising, fully connected or convolutional.

    accelerate launch recipes/mnist_autoencoder.py --data-dir ../shared/data/mnist --model cnn --task denoising
    accelerate launch recipes/mnist_autoencoder.py --download true      # fetch MNIST into data/ first
    python recipes/mnist_autoencoder.py --help                           # every setting, default and unit

Scores MSE and PSNR on the test set every epoch (best.pth = lowest test MSE); with
``--val-images N`` it holds N training images out and scores those instead (for tuning).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit import ConfigError, DenoisingObjective, ReconstructionMedia, ReconstructionMetrics, ReconstructionObjective
from toolkit import TrainConfig, Trainer, image_grid, parse_config, run_recipe
from toolkit.data import DEFAULT_NOISE_STD, holdout_split, load_mnist
from toolkit.models import build_autoencoder, check_param_budget

BUDGETS = {"linear": 500_000, "cnn": 35_000}  # trainable parameters each model may have


@dataclass
class MNISTConfig(TrainConfig):
    """MNIST reconstruction / denoising autoencoders (spec task 2)."""

    data_dir: str = "data"  # folder holding MNIST/raw/ (torchvision layout, .gz files are fine)
    download: bool = True  # fetch MNIST with torchvision when its files are missing (needs a network)
    model: str = "cnn"  # linear (LinearAutoEncoder, 223k parameters) | cnn (AutoEncoder_CNN, <= 35k)
    cnn_channels: tuple[int, int, int] = (16, 32, 15)  # AutoEncoder_CNN conv widths c1,c2,c3 (c3 = code size)
    task: str = "reconstruction"  # reconstruction (target = input) | denoising (noisy input, clean target)
    noise_std: float = DEFAULT_NOISE_STD  # std of the Gaussian noise of the denoising task, [0, 1] pixel units
    val_images: int = 0  # training images held out to validate on instead of the test set (tuning); 0 = test set
    param_budget: int = 0  # most trainable parameters; 0 = the model's budget (linear 500,000, cnn 35,000)
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # images per process per step
    lr: float = 3e-3  # peak AdamW learning rate
    num_workers: int = 0  # DataLoader worker processes (the data sit in memory: 0 is fastest)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in BUDGETS:
            raise ConfigError(f"model must be linear or cnn, got {self.model!r}")
        if self.task not in ("reconstruction", "denoising"):
            raise ConfigError(f"task must be reconstruction or denoising, got {self.task!r}")
        if len(self.cnn_channels) != 3 or min(self.cnn_channels) < 1:
            raise ConfigError(f"cnn_channels must be three positive widths, got {self.cnn_channels}")
        for name in ("noise_std", "val_images", "param_budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        budget = self.param_budget or BUDGETS[self.model]  # what main gives the Trainer; counted on the meta device
        cnn = self.model == "cnn"
        check_param_budget(lambda: build_autoencoder(self.model, self.cnn_channels), budget,
                           f"model {self.model}" + (f" with cnn_channels {tuple(self.cnn_channels)}" if cnn else ""),
                           "give smaller --cnn-channels" if cnn else "raise --param-budget",
                           "" if self.param_budget else f"the {self.model} model's budget of {budget:,} (param_budget 0)")


def build_data(cfg: MNISTConfig, trainer: Trainer):
    """(train, val) datasets of (image (1, 28, 28) uint8 0..255, label int64)."""
    with trainer.accelerator.local_main_process_first():  # one download per machine
        try:
            train, test = (load_mnist(cfg.data_dir, train=t, download=cfg.download) for t in (True, False))
        except (FileNotFoundError, ValueError) as err:  # no MNIST there: one error line, as cifar10
            raise ConfigError(str(err)) from None
    if not cfg.val_images:
        return train, test
    if cfg.val_images >= len(train):
        raise ConfigError(f"val_images must be below the {len(train)} training images, got {cfg.val_images}")
    return holdout_split(train, cfg.val_images, cfg.seed)


def figures(sample, denoising: bool) -> dict:
    """Originals, the noisy inputs (denoising) and the reconstructions of the first validation batch."""
    rows = [sample.targets, *([sample.inputs] if denoising else []), sample.preds]
    titles = ["original", *(["noisy input"] if denoising else []), "reconstruction"]
    return {"reconstructions": image_grid(rows, titles)}


def main(argv=None) -> list[dict]:
    cfg = parse_config(MNISTConfig, argv)
    trainer = Trainer(cfg, recipe=f"mnist_{cfg.model}_{cfg.task}")
    trainer.keep_settings(("val_images", "seed"), "the images it trains and validates on would differ")
    train, val = build_data(cfg, trainer)
    denoising = cfg.task == "denoising"
    objective = DenoisingObjective(cfg.noise_std) if denoising else ReconstructionObjective()
    model = build_autoencoder(cfg.model, cfg.cnn_channels)
    return trainer.fit(
        model, objective, train, val, metrics=[ReconstructionMetrics()],
        monitor="mse", mode="min", param_budget=cfg.param_budget or BUDGETS[cfg.model],
        figures=lambda s: figures(s, denoising), callbacks=[ReconstructionMedia()],
    )


if __name__ == "__main__":
    run_recipe(main)
