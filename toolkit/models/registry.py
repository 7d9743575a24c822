"""A trained run's model rebuilt from its ``config.json``: one entry per recipe, built with the same
builders the recipes call (brain-MRI segmentation runs load through
:func:`toolkit.inference.load_segmentation_run`, which also reads ``target.json``).

Used by ``toolkit export``; a recipe that trains a new kind of model adds its entry here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..checkpoint import load_weights
from .autoencoders import build_autoencoder
from .segmentation import build_segmentation_model, parse_widths
from .classifiers import build_classifier, cifar_classifier
from .stl10 import STL10CNN, STL10AutoEncoder, frozen_resnet18, probe_classifier

__all__ = ["ModelEntry", "MODEL_BUILDERS", "recipe_key", "run_config", "build_run_model", "WEIGHT_NAMES"]

WEIGHT_NAMES = ("best.pth", "best.safetensors")  # what a run folder given as --weights is searched for


@dataclass(frozen=True)
class ModelEntry:
    """How to rebuild one recipe's model.

    build: config dict → untrained ``nn.Module`` of the run's architecture; input_shape: config dict →
    (C, H, W) of the float model input; kind: ``classifier`` ((N, K) logits), ``autoencoder``
    ((N, C, H, W) reconstructions in [0, 1]) or ``restoration`` ((N, 1, H, W) logits whose sigmoid is the
    restored image in [0, 1]: the brain-MRI encoder-decoder pretrained by restoration); preprocess: what turns uint8 0..255 images into the
    model input (not part of the model).
    """

    build: Callable[[dict], nn.Module]
    input_shape: Callable[[dict], tuple[int, int, int]]
    kind: str
    preprocess: str


UNIT = "x / 255 (uint8 0..255 -> float32 [0, 1])"


def _side(config: dict) -> int:
    """Image side of an STL-10 pretraining/probe run: 32 when it ran on CIFAR-10 (``--dataset cifar10``), else 96."""
    return 32 if config.get("dataset") == "cifar10" else 96
MODEL_BUILDERS: dict[str, ModelEntry] = {
    "cifar10": ModelEntry(
        lambda c: cifar_classifier(c.get("model", "resnet"), c["width"], c["depth"], c.get("widths", "32,64,128"),
                                   c["dropout"]),
        lambda c: (3, 32, 32), "classifier", "(x / 255 - CIFAR10_MEAN) / CIFAR10_STD per channel"),
    "mnist": ModelEntry(lambda c: build_autoencoder(c["model"], c["cnn_channels"]), lambda c: (1, 28, 28),
                        "autoencoder", UNIT),
    "stl10_supervised": ModelEntry(lambda c: STL10CNN(num_classes=10, width=c["width"], dropout=c["dropout"]),
                                   lambda c: (3, 96, 96), "classifier",
                                   "(x / 255 - STL10_MEAN) / STL10_STD per channel"),
    "stl10_resnet18": ModelEntry(lambda c: frozen_resnet18(None, num_classes=10),
                                 lambda c: (3, c["image_size"], c["image_size"]), "classifier",
                                 "bilinear resize to image_size, (x / 255 - IMAGENET_MEAN) / IMAGENET_STD"),
    "stl10_pretrain": ModelEntry(lambda c: STL10AutoEncoder(c["channels"]), lambda c: (3, _side(c), _side(c)),
                                 "autoencoder", UNIT),
    "brain_mri_pretrain": ModelEntry(
        lambda c: build_segmentation_model(c["model"], in_channels=c["in_channels"], out_channels=1,
                                           widths=parse_widths(c.get("widths", ""))),
        lambda c: (c["in_channels"], c["image_size"], c["image_size"]), "restoration",
        "as the brain-MRI segmentation runs: per-image standardisation (2D images) or from_zscore_uint8 (NIfTI)"),
    "stl10_probe": ModelEntry(lambda c: probe_classifier(c["channels"], 10, c["dropout"], size=_side(c)),
                              lambda c: (3, _side(c), _side(c)), "classifier", UNIT),
}


def recipe_key(recipe: str) -> str:
    """The registry key of a recipe name: ``mnist_<model>_<task>`` → ``mnist``, others unchanged."""
    return "mnist" if recipe.startswith("mnist_") else recipe


def run_config(weights: str | Path) -> dict:
    """The ``config.json`` beside ``weights`` (a best.pth / best.safetensors), with an stl10_probe's
    encoder widths taken from its ``encoder.json`` (the pretraining run's, which the probe used).
    Raises FileNotFoundError naming the missing file."""
    config_path = Path(weights).parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --weights must be the best.pth of a run folder that "
                                f"holds the run's config.json")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    encoder_json = config_path.parent / "encoder.json"
    if cfg.get("recipe") == "stl10_probe" and encoder_json.is_file():
        cfg["channels"] = json.loads(encoder_json.read_text())["channels"]
    return cfg


def build_run_model(weights: str | Path, cfg: dict) -> tuple[nn.Module, ModelEntry]:
    """The model of the run ``cfg`` (its config.json) with the state dict of ``weights`` loaded, in
    evaluation mode, and its registry entry. Raises ValueError naming the file for an unknown recipe,
    a config without a field the builder needs, or weights of another architecture."""
    config_path = Path(weights).parent / "config.json"
    recipe = str(cfg.get("recipe"))
    entry = MODEL_BUILDERS.get(recipe_key(recipe))
    if entry is None:
        raise ValueError(f"{config_path}: unknown recipe {recipe!r}; export knows brain_mri, mnist_*, "
                         f"{', '.join(sorted(MODEL_BUILDERS))}")
    try:
        model = entry.build(cfg)
        entry.input_shape(cfg)
    except KeyError as err:
        raise ValueError(f"{config_path} has no field {err} that the {recipe} model needs") from None
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the {recipe} model of {config_path}: {err}") from None
    return model.eval(), entry
