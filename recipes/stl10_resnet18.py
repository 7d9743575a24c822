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

from toolkit import Accuracy, ClassificationConfig, ConfigError, SaveCurve, Trainer, classification_objective
from toolkit import parse_config, run_recipe, stl10_train_test
from toolkit.data import IMAGENET_MEAN, IMAGENET_STD, ResizeNormalize
from toolkit.models import frozen_resnet18


@dataclass
class STL10ResNetConfig(ClassificationConfig):
    """STL-10 on a frozen pretrained ResNet-18 with a new trainable 10-class layer (spec task 3)."""

    data_dir: str = "data/stl10"  # folder holding stl10_binary/ (or that folder itself)
    download: bool = False  # fetch STL-10 (2.6 GB) with torchvision into data_dir when missing (needs a network)
    weights: str = "IMAGENET1K_V1"  # torchvision weights name (downloaded once, needs a network) or PATH of a state dict
    image_size: int = 224  # side in pixels the 96x96 images are resized to on the device (ImageNet: 224)
    crop_padding: int = 28  # random-crop padding in pixels (at image_size) for training batches; 0 = no crop
    param_budget: int = 500_000  # most trainable parameters (the frozen 11.2M of the backbone are exempt)
    epochs: int = 15  # passes over the 5,000 training images
    batch_size: int = 128  # images per process per step
    lr: float = 1e-3  # peak AdamW learning rate of the final layer
    num_workers: int = 2  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 32:
            raise ConfigError(f"image_size must be >= 32, got {self.image_size}")


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10ResNetConfig, argv)
    trainer = Trainer(cfg, recipe="stl10_resnet18")
    acc = trainer.accelerator
    with acc.local_main_process_first():  # one weights download per machine
        try:
            model = frozen_resnet18(cfg.weights, num_classes=10)
        except (OSError, ValueError) as err:  # FileNotFoundError, ConnectionError: no file, no network
            raise ConfigError(f"--weights: {err}") from None
    size = f"{cfg.image_size}x{cfg.image_size}"
    train, test = stl10_train_test(cfg, acc, f"ResNet-18 weights {cfg.weights}, input {size}")
    objective = classification_objective(cfg, preprocess=ResizeNormalize(IMAGENET_MEAN, IMAGENET_STD, cfg.image_size))
    return trainer.fit(model, objective, train, test, metrics=[Accuracy()], monitor="accuracy",
                       mode="max", param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])


if __name__ == "__main__":
    run_recipe(main)
