"""What the image-classification recipes share: their common settings and the objective built from them.

A classification recipe (``recipes/cifar10.py``, ``recipes/stl10_*.py``) declares a config that
extends :class:`ClassificationConfig` with its data and model fields (and its own defaults), then::

    train, test = stl10_train_test(cfg, trainer.accelerator)   # or its own data sets
    objective = classification_objective(cfg, preprocess=Normalize(MEAN, STD))
    trainer.fit(model, objective, train, test, metrics=[Accuracy()], monitor="accuracy", mode="max",
                param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import ConfigError, TrainConfig
from .data.batch_transforms import RandomCropFlip
from .data.errors import DataError
from .data.stl10 import open_stl10
from .objectives import ClassificationObjective, check_tta

__all__ = ["ClassificationConfig", "classification_objective", "stl10_train_test"]


@dataclass
class ClassificationConfig(TrainConfig):
    """Settings every classification recipe shares: label smoothing, batch augmentation, parameter budget."""

    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 = none
    crop_padding: int = 4  # random-crop padding in pixels for training batches; 0 = no crop
    flip_p: float = 0.5  # probability of a horizontal flip per training image
    param_budget: int = 500_000  # most trainable parameters the model may have
    tta: str = "none"  # test-time augmentation in evaluation: none | flip (2 passes) | flip-translate (6 passes)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_tta(self.tta)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.flip_p <= 1:
            raise ConfigError(f"need 0 <= label_smoothing < 1 and 0 <= flip_p <= 1, got {self.label_smoothing} "
                              f"and {self.flip_p}")


def classification_objective(cfg: ClassificationConfig, preprocess: Callable) -> ClassificationObjective:
    """Cross-entropy with ``cfg.label_smoothing`` on ``preprocess(uint8 batch)``; training batches are first
    cropped and flipped on the device (``RandomCropFlip(cfg.crop_padding, cfg.flip_p)``, none when both are 0);
    evaluation averages the logits over ``cfg.tta``'s views."""
    augment = RandomCropFlip(cfg.crop_padding, cfg.flip_p) if cfg.crop_padding or cfg.flip_p else None
    return ClassificationObjective(cfg.label_smoothing, preprocess=preprocess, augment=augment, tta=cfg.tta)


def stl10_train_test(cfg, accelerator, note: str = "") -> tuple:
    """STL-10's labelled (train, test) splits from ``cfg.data_dir`` (``cfg.download``: fetch them when missing),
    printed as ``data: STL-10 at ROOT: train N, test M[; note]``; a missing or malformed file is a ConfigError."""
    try:
        data = open_stl10(cfg.data_dir, ("train", "test"), cfg.download, accelerator)
    except DataError as err:
        raise ConfigError(str(err)) from None
    train, test = data["train"], data["test"]
    accelerator.print(f"data: STL-10 at {train.root}: train {len(train)}, test {len(test)}"
                      + (f"; {note}" if note else ""))
    return train, test
