"""STL-10 probe (spec task 4): the pretrained encoder, frozen, feeds a linear classifier trained on the labelled split.

    accelerate launch recipes/stl10_probe.py                      # encoder of the newest runs/stl10_pretrain*/best.pth
    accelerate launch recipes/stl10_probe.py --encoder runs/stl10_pretrain-20260101-120000
    accelerate launch recipes/stl10_probe.py --encoder random     # the control: a random, untrained frozen encoder
    accelerate launch recipes/stl10_probe.py --dataset cifar10 --data-dir ../shared/data/cifar10   # the CIFAR-10 check
    make stl10-probe                                              # both, and the two test accuracies side by side

``--dataset stl10`` (default) trains on STL-10's 5,000 labelled training images and scores on
its 8,000 test images; ``--dataset cifar10`` on CIFAR-10's 50,000 training and 10,000 test
images (32x32), with an encoder pretrained by ``recipes/stl10_pretrain.py --dataset cifar10``.
The encoder's parameters are frozen and it stays in evaluation mode (its BatchNorm
statistics are the pretraining ones); only the head learns: Flatten, BatchNorm
without affine parameters, Dropout, Linear features → 10, its width taken from the
encoder's output for one dummy image (96x96: 3,456 → 10, 34,570 parameters; 32x32:
384 → 10, 3,850 parameters). The same probe on a randomly initialised frozen encoder is
the control that says whether pretraining helped: a classifier on random convolutional
features can already be well above chance, so only the difference between the two counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stl10_pretrain import ImageSourceConfig  # the recipe beside this script
from toolkit import Accuracy, ClassificationConfig, ConfigError, SaveCurve, Trainer, classification_objective
from toolkit import parse_config, run_recipe, save_json, stl10_train_test
from toolkit.data import holdout_split, to_unit_range
from toolkit.models import STL10AutoEncoder, check_param_budget, load_encoder, probe_classifier

#: default random-crop padding per --dataset, pixels (an eighth of the image side)
CROP_PADDING = {"stl10": 12, "cifar10": 4}


@dataclass
class STL10ProbeConfig(ImageSourceConfig, ClassificationConfig):
    """A classifier on the frozen encoder of an STL-10 (or CIFAR-10) pretraining run (spec task 4)."""

    encoder: str = "latest"  # latest (newest <output_dir>/stl10_pretrain*/best.pth) | PATH (best.pth or run folder) | random
    channels: tuple[int, ...] = (24, 48, 64, 96)  # encoder widths for --encoder random or a best.pth without config.json
    dropout: float = 0.0  # dropout probability before the linear layer
    crop_padding: int = -1  # random-crop padding in pixels for training batches; 0 = no crop; -1 = 12 (stl10) | 4 (cifar10)
    max_images: int = 0  # use only N labelled training images, drawn at random (seeded; quick runs); 0 = all
    param_budget: int = 500_000  # most trainable parameters (the frozen encoder is exempt)
    epochs: int = 30  # passes over the labelled training images
    batch_size: int = 128  # images per process per step
    lr: float = 1e-3  # peak AdamW learning rate of the head
    num_workers: int = 2  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        self.check_source()
        if self.crop_padding == -1:
            self.crop_padding = CROP_PADDING[self.dataset]
        super().__post_init__()
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ConfigError(f"channels must be at least two positive widths, got {self.channels}")
        if self.max_images < 0:
            raise ConfigError(f"max_images must be >= 0, got {self.max_images}")
        if self.encoder == "random":  # else the encoder's channels are known only from its run (resolve_encoder)
            self.check_budget(self.channels)

    def check_budget(self, channels: tuple[int, ...]) -> None:
        """ConfigError when the probe on an encoder of ``channels`` has more trainable parameters than
        ``param_budget``: its head only (the frozen encoder is exempt, as in the Trainer's check), counted on the
        meta device, so no encoder is built for it."""
        check_param_budget(lambda: probe_classifier(channels, 10, self.dropout, size=self.image_size),
                           self.param_budget, f"the probe's head on an encoder of channels {tuple(channels)} "
                           f"({self.image_size}x{self.image_size} images)",
                           "its features (last width x code side^2) are too many: use an encoder with a smaller "
                           "last width")


def pretrained_on(weights: Path) -> tuple[str, tuple[int, ...] | None]:
    """(--dataset, channels or None) of the pretraining run that wrote ``weights``, from its config.json
    (runs from before ``--dataset`` existed, and a best.pth without config.json: stl10)."""
    run_config = weights.parent / "config.json"
    if not run_config.is_file():
        return "stl10", None
    saved = json.loads(run_config.read_text())
    channels = saved.get("channels")
    return saved.get("dataset", "stl10"), tuple(channels) if channels else None


def resolve_encoder(cfg: STL10ProbeConfig) -> tuple[Path | None, tuple[int, ...]]:
    """(best.pth of the pretraining run or None for random, encoder channels); ConfigError naming what is missing.

    ``latest`` is the newest ``<output_dir>/stl10_pretrain*/best.pth`` pretrained on ``cfg.dataset``; an
    encoder pretrained on the other data set is refused (its image size differs)."""
    if cfg.encoder == "random":
        return None, tuple(cfg.channels)
    if cfg.encoder == "latest":
        found = sorted((p for p in Path(cfg.output_dir).glob("stl10_pretrain*/best.pth")
                        if pretrained_on(p)[0] == cfg.dataset), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"--encoder latest: no stl10_pretrain*/best.pth pretrained on {cfg.dataset} under "
                              f"{cfg.output_dir}/; run recipes/stl10_pretrain.py --dataset {cfg.dataset} "
                              f"(make stl10-pretrain) first, or pass --encoder PATH or random")
        weights = found[-1]
    else:
        weights = Path(cfg.encoder)
        weights = weights / "best.pth" if weights.is_dir() else weights
        if not weights.is_file():
            raise ConfigError(f"--encoder: {weights} does not exist; expected a stl10_pretrain run folder or its "
                              f"best.pth, latest, or random")
    dataset, channels = pretrained_on(weights)
    if dataset != cfg.dataset:
        raise ConfigError(f"--encoder: {weights} was pretrained on {dataset} (its config.json), this probe reads "
                          f"{cfg.dataset}; pass --dataset {dataset} or an encoder pretrained on {cfg.dataset}")
    return weights, channels or tuple(cfg.channels)


def labelled_train_test(cfg: STL10ProbeConfig, accelerator, note: str):
    """(train, test) datasets of (image (3, S, S) uint8 0..255, label int64 0..9); train: ``max_images`` of them
    drawn at random when set."""
    if cfg.dataset == "cifar10":
        train, test = cfg.open_cifar10(accelerator)
    else:
        train, test = stl10_train_test(cfg, accelerator, note)
    if 0 < cfg.max_images < len(train):  # CIFAR-10 class folders are read class by class: draw, do not cut
        _, train = holdout_split(train, cfg.max_images, cfg.seed)
    if cfg.dataset == "cifar10" or cfg.max_images:
        accelerator.print(f"data: {cfg.dataset} labelled train {len(train)}, test {len(test)}; {note}")
    return train, test


def main(argv=None) -> list[dict]:
    cfg = parse_config(STL10ProbeConfig, argv)
    weights, channels = resolve_encoder(cfg)  # before the run folder exists: a newer pretrain run is not this one
    cfg.check_budget(channels)  # before the encoder is built: its channels may be those of its pretraining run
    trainer = Trainer(cfg, recipe="stl10_probe")
    trainer.keep_settings(("dataset", "max_images", "seed"), "the images it trains on would differ")
    acc = trainer.accelerator
    try:
        encoder = STL10AutoEncoder(channels).encoder if weights is None else load_encoder(weights, channels)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--encoder: {err}") from None
    source = "random initialisation (control)" if weights is None else str(weights)
    record = trainer.run_dir / "encoder.json"
    old = json.loads(record.read_text()).get("encoder") if trainer.resuming and record.is_file() else source
    if weights is not None and old is not None and Path(old).resolve() == weights.resolve():
        source = old  # the same file, named by another path: the record keeps its name
    if old != source:  # e.g. --encoder latest after a newer pretraining: the saved state holds the old encoder
        raise trainer.refuse_resume(f"its encoder.json names the encoder {old}, --encoder {cfg.encoder} now gives "
                                    f"{source}", keys=("encoder",))
    if acc.is_main_process:
        save_json(trainer.run_dir / "encoder.json", {"encoder": source, "channels": list(channels)})
    train, test = labelled_train_test(cfg, acc, f"frozen encoder: {source}")
    model = probe_classifier(channels, 10, cfg.dropout, encoder, size=cfg.image_size)
    objective = classification_objective(cfg, preprocess=to_unit_range)  # the pretraining's input range
    return trainer.fit(model, objective, train, test, metrics=[Accuracy()], monitor="accuracy",
                       mode="max", param_budget=cfg.param_budget, callbacks=[SaveCurve(["accuracy"], "accuracy")])


if __name__ == "__main__":
    run_recipe(main)
