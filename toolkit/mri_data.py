"""The data of the brain-MRI recipes: MRI folders (or the built-in synthetic slices) read, split by patient, saved.

:func:`segmentation_data` serves ``recipes/brain_mri.py`` (labelled slices and their target) and
:func:`pretraining_data` ``recipes/brain_mri_pretrain.py`` (the same slices, masks unused); :func:`choose_monitor`
picks the validation figure that selects ``best.pth`` for those slices and :func:`settle_epochs` the default
training length. The first two take the
recipe's config (the fields named below) and the Trainer, write the run's ``split.json`` on the main
process and print what was read. Bad data or settings raise :class:`~toolkit.config.ConfigError` naming
the setting and the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

from torch.utils.data import Dataset

from .checkpoint import save_json
from .config import ConfigError
from .data import (DataError, MRIImageDataset, exclude_split, input_preprocess, label_fraction, save_split,
                   split_records)
from .data.mri import (AttributeClasses, MRISegmentationDataset, attribute_classes, discover_folders,
                       generate_synthetic_mri, mri_augmentation, parse_data_dirs, shared_patients)
from .data.mri.context import slice_key
from .targets import TARGET_FILE, TargetSpec, resolve_target
from .volume_metrics import are_volumes

__all__ = ["SegmentationData", "check_mri_settings", "choose_monitor", "pretraining_data", "segmentation_data",
           "settle_epochs"]

BINARY_MONITORS = ("dice", "iou", "dice_global", "iou_global", "dice_tumour")  # SegmentationMetrics figures
POOLED_FROM_EMPTY_SHARE = 0.25  # share of tumour-free validation slices from which dice_global picks (LGG 0.64,
# the synthetic demo 0.10, figshare 0)
SLICES_SEEN = 155_000  # training slices a run shows by default (epochs 0): 100 epochs of the 1,545 figshare slices


def check_mri_settings(cfg: Any) -> None:
    """ConfigError naming the field for a bad data or model setting the brain-MRI recipes share: ``data_dir``
    (folders that exist), ``synthetic_dir`` (writable, without data_dir), ``synthetic_images`` (>= 1),
    ``slice_rule``, ``image_size`` (>= 16), ``in_channels`` (>= 0), ``model`` and ``widths``; checked when the
    config is built, before any data are read."""
    from .data.mri.channels import parse_slice_rule
    from .models.segmentation import SEGMENTATION_MODELS, parse_widths

    for folder in filter(None, (d.strip() for d in cfg.data_dir.split(","))):
        if not Path(folder).is_dir():
            raise ConfigError(f"data_dir {folder!r} is not a folder")
    if not cfg.data_dir.strip():  # the synthetic slices are written there (the main process of each machine)
        if not cfg.synthetic_dir.strip():  # "" would write images/ and masks/ into the working folder
            raise ConfigError("synthetic_dir is empty; give the folder for the synthetic slices, or --data-dir")
        where = Path(cfg.synthetic_dir)
        parent = next((p for p in (where, *where.absolute().parents) if p.exists()), Path("/"))
        if parent.exists() and not parent.is_dir() or parent != where and not os.access(parent, os.W_OK):
            raise ConfigError(f"synthetic_dir {cfg.synthetic_dir!r}: cannot write the synthetic slices there "
                              f"({parent} is {'not a folder' if not parent.is_dir() else 'not writable'}); give "
                              "another folder, or --data-dir")
    if cfg.synthetic_images < 1:
        raise ConfigError(f"synthetic_images must be >= 1 (slices written when no data_dir is given), "
                          f"got {cfg.synthetic_images}")
    try:
        parse_slice_rule(cfg.slice_rule)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.image_size < 16:
        raise ConfigError(f"image_size must be >= 16 pixels, got {cfg.image_size}")
    if cfg.in_channels < 0:
        raise ConfigError(f"in_channels must be 0 (what the data has) or a channel count, got {cfg.in_channels}")
    if cfg.model not in SEGMENTATION_MODELS:
        raise ConfigError(f"model must be one of {', '.join(SEGMENTATION_MODELS)}; got {cfg.model!r}")
    try:
        parse_widths(cfg.widths)
    except ValueError:
        raise ConfigError(f"widths must be comma-separated positive ints such as '8,16,32,64,128', "
                          f"got {cfg.widths!r}") from None


class SegmentationData(NamedTuple):
    """What a segmentation run trains on (a named tuple: ``train, val, target, preprocess = ...`` unpacks it).

    train, val: datasets of (uint8 image (C, S, S), uint8 label map (1, S, S)) pairs, S = ``image_size``
    (binary: 0/1 tumour; classes/regions: the stored label values, or 0/k for a metadata class column);
    target: the :class:`TargetSpec`; preprocess: uint8 (N, C, S, S) batch → float model input.
    """

    train: Dataset
    val: Dataset
    target: TargetSpec
    preprocess: Callable


def _read(cfg: Any, trainer):
    """The slices of ``cfg.data_dir`` (comma-separated folders), or of ``cfg.synthetic_dir`` after writing
    ``cfg.synthetic_images`` synthetic slices there (once per machine) when no data_dir is given."""
    acc = trainer.accelerator
    data_dir = cfg.data_dir or cfg.synthetic_dir
    synthetic = ("data_dir", "synthetic_dir", "synthetic_images", "seed")  # what writes the synthetic slices
    if not cfg.data_dir:
        trainer.keep_settings(synthetic, "the synthetic slices it trained on would be written anew")
        with acc.local_main_process_first():  # one writer per machine
            if acc.is_local_main_process:
                generate_synthetic_mri(data_dir, num_images=cfg.synthetic_images, seed=cfg.seed)
    found = discover_folders(data_dir, channels=cfg.channels or cfg.in_channels,
                             slice_rule=cfg.slice_rule or None, skip_bad_files=cfg.skip_bad_files)
    input_preprocess(found.intensity)  # 2D images and NIfTI volumes cannot share a run
    return found


def _settle_in_channels(cfg: Any, trainer, read: int, source: str) -> None:
    """``cfg.in_channels`` 0 (what the data has) becomes the ``read`` channel count, recorded in config.json;
    any other value must equal it (ConfigError naming both)."""
    if cfg.in_channels == 0:
        cfg.in_channels = read
        trainer.save_config()
        trainer.accelerator.print(f"in_channels: {read}, what the {source} data give (--channels or --in-channels "
                                  "choose others)")
    elif read != cfg.in_channels:
        raise ConfigError(f"channels={cfg.channels!r} reads {read} channel(s) of the {source} data; set "
                          f"--in-channels {read} (or 0: what the data has)")


def _note_shared(found, say: Callable[[str], None]) -> None:
    """Say once when several folders hold the same patient (case) names: one patient for the split, while
    volumes stay apart per folder (:func:`~toolkit.data.mri.context.slice_key`)."""
    shared = shared_patients(found.slices)
    if shared:
        names = ", ".join(f"{p} ({' + '.join(t)})" for p, t in list(shared.items())[:4]) + (", ..." if len(
            shared) > 4 else "")
        volumes = "; its volumes stay apart, one per folder" if are_volumes(found.slices) else ""
        say(f"note: {len(shared)} patient name(s) sit in several data folders ({names}): each is one patient for "
            f"the split (its slices on one side){volumes}")


def _roots(cfg: Any) -> str:
    """The data folders as given (resolved), for split.json: read again, they give the same slice ids. Not the
    layouts' roots: an LGG folder's is its ``kaggle_3m/``, whose name would tag the ids of several folders."""
    return ",".join(str(d.resolve()) for d in parse_data_dirs(cfg.data_dir or cfg.synthetic_dir))


def _where(found) -> str:
    return ", ".join(str(r) for r in found.roots)


SPLIT_SETTINGS = ("data_dir", "channels", "slice_rule", "skip_bad_files", "synthetic_images", "val_fraction",
                  "test_fraction", "split_block", "folds", "fold", "seed", "label_fraction", "exclude_split")


def _save_run_split(trainer, split: dict, **info: Any) -> None:
    """Write the run's ``split.json`` (main process). A resumed run must train on the split it started with: when
    its saved ``split.json`` lists other ids, raise ConfigError naming the settings (``SPLIT_SETTINGS``) that
    differ from the run's saved config (``Trainer.refuse_resume``), instead of re-splitting it silently. Call on
    every process."""
    path = trainer.run_dir / "split.json"
    if trainer.resuming and path.is_file():
        try:
            saved = {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, list)}
        except (OSError, ValueError) as err:
            raise ConfigError(f"--resume: cannot read the run's {path}: {err}") from None
        now = {k: [r.id for r in v] for k, v in split.items()}
        if any(sorted(saved.get(k, [])) != sorted(now.get(k, [])) for k in set(saved) | set(now)):
            sizes = "; ".join(f"{k}: {len(saved.get(k, []))} saved, {len(now.get(k, []))} now"
                              for k in sorted(set(saved) | set(now)))
            raise trainer.refuse_resume(f"{path} holds another split than these settings give ({sizes})",
                                        keys=SPLIT_SETTINGS)
    if trainer.accelerator.is_main_process:
        save_split(path, split, **info)


def segmentation_data(cfg: Any, trainer) -> SegmentationData:
    """Labelled slices split by patient (``val_fraction``, ``test_fraction``, ``split_block``, ``folds``/``fold``,
    ``seed``), ``label_fraction`` of the training patients kept, the target resolved (``target``, ``regions``,
    ``class_column``); writes ``split.json`` and ``target.json`` into the run folder."""
    acc = trainer.accelerator
    try:
        found = _read(cfg, trainer)
        names = attribute_classes(found.slices, cfg.class_column) if cfg.class_column else None
        target = resolve_target(cfg.target, labels=found.labels, regions=found.regions, regions_text=cfg.regions,
                                class_names=names)
    except (DataError, ValueError, FileNotFoundError) as err:  # FileNotFoundError: e.g. an image without its mask
        raise ConfigError(f"data_dir: {err}") from None  # run_recipe leaves no run folder
    _settle_in_channels(cfg, trainer, found.slices[0].num_channels, found.source)
    try:  # too few patients (or id blocks) for the folds or fractions asked: ValueError naming both
        split = split_records(found.slices, cfg.val_fraction, cfg.test_fraction, seed=cfg.seed,
                              block_size=cfg.split_block, folds=cfg.folds, fold=cfg.fold)
        if cfg.label_fraction < 1:  # few labels: a patient-safe share of the training patients, by seed only
            split["train"] = label_fraction(split["train"], cfg.label_fraction, cfg.seed, cfg.split_block)
    except ValueError as err:
        raise ConfigError(f"split of {_where(found)}: {err}") from None  # run_recipe leaves no run folder
    unit = "patient" if found.patients else f"blocks of {cfg.split_block} ids"
    context = int(getattr(cfg, "context_slices", 0))
    if context and not are_volumes(found.slices):
        raise ConfigError(f"context_slices {context}: the data at {_where(found)} are 2D "
                          f"slices of no volume ({found.source}); 2.5D needs NIfTI cases or LGG patient folders")
    common = {"size": cfg.image_size, "skip_bad_files": cfg.skip_bad_files, "context": context}
    if target.kind != "binary" and not names:
        common["labels"] = True  # label maps as stored, not tumour = label > 0
    try:  # every slice read here (a label not declared, a broken volume, NaN voxels: MRIDataError naming the file)
        train = MRISegmentationDataset(split["train"], transform=mri_augmentation(cfg.augment), **common)
        val = MRISegmentationDataset(split["val"], **common)
    except DataError as err:
        raise ConfigError(f"data_dir: {err}") from None  # run_recipe leaves no run folder
    _save_run_split(trainer, split, data_dir=_roots(cfg), source=found.source, unit=unit, folds=cfg.folds,
                    fold=cfg.fold)  # once the data are read: a start that fails on them writes no split.json
    if acc.is_main_process:
        save_json(trainer.run_dir / TARGET_FILE, {**target.to_dict(), "intensity": found.intensity})
    skipped = found.skipped + train.skipped + val.skipped
    if names:
        train, val = (AttributeClasses(d, cfg.class_column, names) for d in (train, val))
    used = {"train": len(train), "val": len(val)}  # after --skip-bad-files dropped what it could not read
    sizes = ", ".join(f"{k} {used.get(k, len(v))}" for k, v in split.items())
    where = _where(found)
    units = f"{len(found.patients)} patients" if found.patients else "no patient ids"
    volumes = {key[0] for key in map(slice_key, found.slices) if key is not None}
    if volumes and len(volumes) != len(found.patients):  # several folders holding the same case names
        units += f" in {len(volumes)} volumes"
    acc.print(f"data: {found.source} at {where}: {len(found.slices)} slices, {units}; split by {unit}: {sizes}"
              + (f" (fold {cfg.fold} of {cfg.folds} validates)" if cfg.folds else "")
              + (f"; target {target.kind}: {', '.join(target.names)}" if target.kind != "binary" else ""))
    _note_shared(found, acc.print)
    if not found.patients:
        acc.print("note: the data name no patients, so the split is by id: slices of one patient may sit on both "
                  "sides and validation may overstate what unseen patients get (give a metadata.csv with "
                  "id,patient_id)")
    _say_skipped(acc, skipped)
    return SegmentationData(train, val, target, input_preprocess(found.intensity))


def _say_skipped(acc, skipped: list) -> None:
    """Print the (path, reason) pairs of the files ``--skip-bad-files`` left out (the first ten)."""
    if skipped:
        acc.print(f"skipped {len(skipped)} bad file(s): " + "; ".join(f"{p} ({why})" for p, why in skipped[:10]))


def settle_epochs(cfg: Any, trainer, train_size: int) -> None:
    """``cfg.epochs`` 0 becomes ``round(SLICES_SEEN / train_size)`` (at least 1), recorded in config.json: the same
    number of training slices whatever the data's size. Chosen on validation: 100 epochs were the best on figshare's
    1,545 training slices (142 validated lower), while on LGG's 305 they left 9 of 15 minutes unused and training
    on until the budget ran out (227 epochs) scored better on every figure (docs/brain-mri.md, LGG); shorter
    schedules scored lower out of fold (LGG ``--epochs 250``: 0.753 per patient against 0.793; BRATS ``--epochs
    100``: 0.743 against 0.804, docs/volumes.md). With ``--max-minutes`` the Trainer still fits fewer epochs when
    they do not fit."""
    if cfg.epochs == 0:
        cfg.epochs = max(1, round(SLICES_SEEN / max(train_size, 1)))
        trainer.save_config()
        trainer.accelerator.print(f"epochs: {cfg.epochs} ({SLICES_SEEN:,} training slices / {train_size}; "
                                  "--epochs N to set them)")


def choose_monitor(requested: str, target: TargetSpec, val: Dataset, say: Callable[[str], None] = print) -> str:
    """The validation figure that picks ``best.pth``: ``requested`` when given (binary targets: one of
    :data:`BINARY_MONITORS`, else ConfigError), else pixel-pooled ``dice_global`` for classes and regions and
    for binary data whose validation slices are at least :data:`POOLED_FROM_EMPTY_SHARE` tumour-free, per-image
    ``dice`` otherwise; a pooled choice is told, with its reason, through ``say``.

    Why: a slice without tumour scores 1 per image when predicted empty, so where many validation slices are empty
    (LGG: about two thirds) the mean per-image Dice rewards a model that predicts nothing (on LGG the best epoch by
    it found no tumour at all: docs/brain-mri.md, LGG); per class or region the same holds for every class a
    slice lacks.
    ``val``: the validation dataset (binary: its ``masks`` array (N, S, S), when read, is checked for empty ones).
    """
    binary = target.kind == "binary"
    if requested:
        if binary and requested not in BINARY_MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(BINARY_MONITORS)} for binary masks, "
                              f"got {requested!r}")
        return requested
    if not binary:
        say(f"monitor: dice_global (pixels pooled; {target.kind}: per image, each slice lacking a class or region "
            "would reward predicting nothing)")
        return "dice_global"
    masks = getattr(val, "masks", None)
    if masks is None or not len(masks):
        return "dice"
    empty = int((masks.reshape(len(masks), -1).max(axis=1) == 0).sum())
    if empty < POOLED_FROM_EMPTY_SHARE * len(masks):
        return "dice"
    say(f"monitor: dice_global (pixels pooled), since {empty} of {len(masks)} validation slices hold no tumour and "
        "per-image Dice would reward predicting nothing (--monitor dice to pick by it anyway)")
    return "dice_global"


def pretraining_data(cfg: Any, trainer) -> tuple[Dataset, Dataset, str]:
    """Unlabelled slices, minus every patient of ``cfg.exclude_split``'s val and test lists when given, split by
    patient (``val_fraction``, ``seed``): (train, val) datasets of uint8 (C, S, S) slices and the intensity kind
    ("per_slice" or "zscore"); writes ``split.json`` into the run folder."""
    acc = trainer.accelerator
    try:
        found = _read(cfg, trainer)
        slices, dropped = exclude_split(found.slices, cfg.exclude_split) if cfg.exclude_split else (found.slices, 0)
        split = split_records(slices, cfg.val_fraction, seed=cfg.seed)
    except (DataError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data_dir / exclude_split: {err}") from None
    _settle_in_channels(cfg, trainer, slices[0].num_channels, found.source)
    try:
        train, val = (MRIImageDataset(split[k], cfg.image_size, cfg.skip_bad_files) for k in ("train", "val"))
    except DataError as err:
        raise ConfigError(f"data_dir: {err}") from None  # run_recipe leaves no run folder
    _save_run_split(trainer, split, data_dir=_roots(cfg), source=found.source,
                    excluded_split=cfg.exclude_split, excluded_slices=dropped)
    acc.print(f"data: {found.source} at {_where(found)}: {len(found.slices)} slices, {dropped} left out by "
              f"--exclude-split; unlabelled train {len(train)}, val {len(val)}")
    _say_skipped(acc, found.skipped + train.skipped + val.skipped)
    return train, val, found.intensity
