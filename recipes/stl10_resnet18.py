"""STL-10 with a frozen ImageNet ResNet-18 (spec task 3): only a new 10-class final layer learns.

    accelerate launch recipes/stl10_resnet18.py --data-dir data/stl10              # ImageNet weights by name (network)
    accelerate launch recipes/stl10_resnet18.py --weights ~/resnet18-f37072fd.pth  # a local copy, no network
    python recipes/stl10_resnet18.py --help

Every ResNet-18 parameter is frozen (and its BatchNorm statistics too: the backbone
stays in evaluation mode); its ``fc`` is replaced by a trainable Linear 512 → 10
(5,130 parameters, the only ones counted against the budget). Images are resized on
the device from 96x96 to ImageNet's 224x224 and normalised with ImageNet mean/std.
The test-accuracy history is in history.json and figures/accuracy.png.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer, parse_config, plot_history
from toolkit.config import ConfigError
from toolkit.data.batch_transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip, ResizeNormalize
from toolkit.data.errors import DataError
from toolkit.data.stl10 import open_stl10
from toolkit.figures import save_figure
from toolkit.models.stl10 import frozen_resnet18


@dataclass
class STL10ResNetConfig(TrainConfig):
    """STL-10 on a frozen pretrained ResNet-18 with a new trainable 10-class layer (spec task 3)."""

    data_dir: str = "data/stl10"  # folder holding stl10_binary/ (or that folder itself)
    download: bool = False  # fetch STL-10 (2.6 GB) with torchvision into data_dir when missing (needs a network)
    weights: str = "IMAGENET1K_V1"  # torchvision weights name (downloaded once, needs a network) or PATH of a state dict
    image_size: int = 224  # side in pixels the 96x96 images are resized to on the device (ImageNet: 224)
    crop_padding: int = 28  # random-crop padding in pixels (at image_size) for training batches; 0 = no crop
    flip_p: float = 0.5  # probability of a horizontal flip per training image
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 = none
    param_budget: int = 500_000  # most trainable parameters (the frozen 11.2M of the backbone are exempt)
    epochs: int = 15  # passes over the 5,000 training images
    batch_size: int = 128  # images per process per step
    lr: float = 1e-3  # peak AdamW learning rate of the final layer
    num_workers: int = 2  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 32 or self.crop_padding < 0 or not 0 <= self.flip_p <= 1:
            raise ConfigError(f"need image_size >= 32, crop_padding >= 0 and 0 <= flip_p <= 1; got "
                              f"{self.image_size}, {self.crop_padding}, {self.flip_p}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10ResNetConfig, argv)
    trainer = Trainer(cfg, recipe="stl10_resnet18")
    acc = trainer.accelerator
    with acc.local_main_process_first():  # one weights download per machine
        try:
            model = frozen_resnet18(cfg.weights, num_classes=10)
        except (OSError, ValueError) as err:  # FileNotFoundError, ConnectionError: no file, no network
            raise ConfigError(f"--weights: {err}") from None
    try:
        data = open_stl10(cfg.data_dir, ("train", "test"), cfg.download, acc)
    except DataError as err:  # a missing or malformed STL-10 file
        raise ConfigError(str(err)) from None
    acc.print(f"data: STL-10 at {data['train'].root}: train {len(data['train'])}, test {len(data['test'])}; "
              f"ResNet-18 weights {cfg.weights}, input {cfg.image_size}x{cfg.image_size}")
    augment = RandomCropFlip(cfg.crop_padding, cfg.flip_p) if cfg.crop_padding or cfg.flip_p else None
    preprocess = ResizeNormalize(IMAGENET_MEAN, IMAGENET_STD, cfg.image_size)
    objective = ClassificationObjective(cfg.label_smoothing, preprocess=preprocess, augment=augment)
    history = trainer.fit(model, objective, data["train"], data["test"], metrics=[Accuracy()], monitor="accuracy",
                          mode="max", param_budget=cfg.param_budget)
    if acc.is_main_process and history:
        save_figure(plot_history(history, keys=["accuracy"]), trainer.figures_dir / "accuracy.png")
    return history


if __name__ == "__main__":
    main()
