"""STL-10 supervised (spec task 3): a CNN of Conv-BN-ReLU blocks and max pooling, trained on the 5,000 labelled images.

    accelerate launch recipes/stl10_supervised.py --data-dir data/stl10            # folder holding stl10_binary/
    accelerate launch recipes/stl10_supervised.py --download true                  # fetch STL-10 (2.6 GB) first
    python recipes/stl10_supervised.py --help                                      # every setting, default and unit

Scores the 8,000 test images every epoch (history.json, figures/accuracy.png = the
test-accuracy history); best.pth holds the epoch with the best test accuracy. Images
are read through a memory map and stay uint8 until the device, where they are
normalised, randomly cropped and flipped batch-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit import Accuracy, ClassificationConfig, ConfigError, SaveCurve, Trainer, classification_objective
from toolkit import parse_config, run_recipe, stl10_train_test
from toolkit.data import STL10_MEAN, STL10_STD, ResizeNormalize
from toolkit.models import STL10CNN, check_param_budget


@dataclass
class STL10SupervisedConfig(ClassificationConfig):
    """STL-10 classification from scratch on the labelled train split (spec task 3)."""

    data_dir: str = "data/stl10"  # folder holding stl10_binary/ (or that folder itself)
    download: bool = False  # fetch STL-10 (2.6 GB) with torchvision into data_dir when missing (needs a network)
    width: int = 32  # channels of the first block (then 2x, 4x, 4x, 6x); 32 = 464,682 parameters
    dropout: float = 0.3  # dropout probability before the classifier
    label_smoothing: float = 0.1  # cross-entropy label smoothing, 0 = none
    crop_padding: int = 12  # random-crop padding in pixels (of 96) for training batches; 0 = no crop
    epochs: int = 80  # passes over the 5,000 training images
    batch_size: int = 128  # images per process per step
    optimizer: str = "sgd"  # adamw | sgd (Nesterov)
    lr: float = 0.05  # peak learning rate (SGD, batch 128)
    weight_decay: float = 5e-4  # L2 penalty on conv/linear weights (SGD), per step
    max_grad_norm: float = 0.0  # clip the global gradient L2 norm to this; 0 = no clipping
    num_workers: int = 2  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"need width >= 1 and 0 <= dropout < 1, got {self.width} and {self.dropout}")
        check_param_budget(self.build_model, self.param_budget, f"STL10CNN of width {self.width}",
                           "give a smaller --width")  # on the meta device

    def build_model(self) -> STL10CNN:
        """The classifier these settings describe: (N, 3, 96, 96) images → (N, 10) logits."""
        return STL10CNN(num_classes=10, width=self.width, dropout=self.dropout)


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10SupervisedConfig, argv)
    trainer = Trainer(cfg, recipe="stl10_supervised")
    train, test = stl10_train_test(cfg, trainer.accelerator)
    model = cfg.build_model()
    objective = classification_objective(cfg, preprocess=ResizeNormalize(STL10_MEAN, STL10_STD, None))
    return trainer.fit(model, objective, train, test, metrics=[Accuracy()], monitor="accuracy",
                       mode="max", param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])


if __name__ == "__main__":
    run_recipe(main)
