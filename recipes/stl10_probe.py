"""STL-10 probe (spec task 4): the pretrained encoder, frozen, feeds a linear classifier trained on the labelled split.

    accelerate launch recipes/stl10_probe.py                      # encoder of the newest runs/stl10_pretrain*/best.pth
    accelerate launch recipes/stl10_probe.py --encoder runs/stl10_pretrain-20260101-120000
    accelerate launch recipes/stl10_probe.py --encoder random     # the control: a random, untrained frozen encoder
    make stl10-probe                                              # both, and the two test accuracies side by side

The encoder's parameters are frozen and it stays in evaluation mode (its BatchNorm
statistics are the pretraining ones); only the head learns: Flatten, BatchNorm
without affine parameters, Dropout, Linear 3,456 → 10 (34,570 parameters). The same
probe on a randomly initialised frozen encoder is the control that says whether
pretraining helped: a classifier on random convolutional features can already be
well above chance, so only the difference between the two counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit import Accuracy, ClassificationConfig, ConfigError, SaveCurve, Trainer, classification_objective
from toolkit import parse_config, save_json, stl10_train_test
from toolkit.data import to_unit_range
from toolkit.models import STL10AutoEncoder, load_encoder, probe_classifier


@dataclass
class STL10ProbeConfig(ClassificationConfig):
    """A classifier on the frozen encoder of an STL-10 pretraining run (spec task 4)."""

    data_dir: str = "data/stl10"  # folder holding stl10_binary/ (or that folder itself)
    download: bool = False  # fetch STL-10 (2.6 GB) with torchvision into data_dir when missing (needs a network)
    encoder: str = "latest"  # latest (newest <output_dir>/stl10_pretrain*/best.pth) | PATH (best.pth or run folder) | random
    channels: tuple[int, ...] = (24, 48, 64, 96)  # encoder widths for --encoder random or a best.pth without config.json
    dropout: float = 0.0  # dropout probability before the linear layer
    crop_padding: int = 12  # random-crop padding in pixels (of 96) for training batches; 0 = no crop
    param_budget: int = 500_000  # most trainable parameters (the frozen encoder is exempt)
    epochs: int = 30  # passes over the 5,000 training images
    batch_size: int = 128  # images per process per step
    lr: float = 1e-3  # peak AdamW learning rate of the head
    num_workers: int = 2  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"channels must be at least two positive widths, got {self.channels}")


def resolve_encoder(cfg: STL10ProbeConfig) -> tuple[Path | None, tuple[int, ...]]:
    """(best.pth of the pretraining run or None for random, encoder channels); ConfigError naming what is missing."""
    if cfg.encoder == "random":
        return None, tuple(cfg.channels)
    if cfg.encoder == "latest":
        found = sorted(Path(cfg.output_dir).glob("stl10_pretrain*/best.pth"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"--encoder latest: no stl10_pretrain*/best.pth under {cfg.output_dir}/; run "
                              f"recipes/stl10_pretrain.py (make stl10-pretrain) first, or pass --encoder PATH or random")
        weights = found[-1]
    else:
        weights = Path(cfg.encoder)
        weights = weights / "best.pth" if weights.is_dir() else weights
        if not weights.is_file():
            raise ConfigError(f"--encoder: {weights} does not exist; expected a stl10_pretrain run folder or its "
                              f"best.pth, latest, or random")
    run_config = weights.parent / "config.json"
    channels = tuple(cfg.channels)
    if run_config.is_file():
        channels = tuple(json.loads(run_config.read_text()).get("channels", channels))
    return weights, channels


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10ProbeConfig, argv)
    weights, channels = resolve_encoder(cfg)  # before the run folder exists: a newer pretrain run is not this one
    trainer = Trainer(cfg, recipe="stl10_probe")
    acc = trainer.accelerator
    try:
        encoder = STL10AutoEncoder(channels).encoder if weights is None else load_encoder(weights, channels)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--encoder: {err}") from None
    source = "random initialisation (control)" if weights is None else str(weights)
    if acc.is_main_process:
        save_json(trainer.run_dir / "encoder.json", {"encoder": source, "channels": list(channels)})
    train, test = stl10_train_test(cfg, acc, f"frozen encoder: {source}")
    model = probe_classifier(channels, 10, cfg.dropout, encoder)
    objective = classification_objective(cfg, preprocess=to_unit_range)  # the pretraining's input range
    return trainer.fit(model, objective, train, test, metrics=[Accuracy()], monitor="accuracy",
                       mode="max", param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])


if __name__ == "__main__":
    main()
