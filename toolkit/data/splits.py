"""Every train/validation/test split of the toolkit, seeded and deterministic.

- :func:`split_ids`: ids into (train, val) over single ids, blocks of consecutive ids, or groups;
- :func:`split_records`: MRI slices into train/val[/test], never splitting a patient;
- :func:`label_fraction`: a seeded, patient-safe share of the training slices (fine-tuning with few labels);
- :func:`save_split` / :func:`load_split`: a split as a JSON file of ids, and back onto records;
- :func:`holdout_indices` / :func:`holdout_split`: a random hold-out of a dataset (validation
  images taken from a training set: CIFAR-10, MNIST, STL-10 unlabelled).

Records are anything with ``id`` (str) and ``patient`` (str or None) attributes, e.g.
:class:`~toolkit.data.mri.io.MRISlice`.
"""
from __future__ import annotations

import json
import math
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from ..checkpoint import save_json
from .errors import DataError

if TYPE_CHECKING:  # the MRI readers (and OpenCV) load only for MRI splits
    from .mri.io import MRISlice

__all__ = ["fold_of_units", "holdout_indices", "holdout_split", "label_fraction", "load_split", "record_units",
           "save_split", "split_ids", "split_records"]


def holdout_indices(n: int, holdout: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(rest, held) indices into a dataset of ``n`` items: ``holdout`` of 0..n-1 drawn at random,
    fixed by ``seed`` (``torch.randperm`` with a CPU generator seeded by ``seed``), and the other
    ``n - holdout``; both in draw order. Raises ValueError unless 0 < holdout < n."""
    if not 0 < holdout < n:
        raise ValueError(f"holdout must be between 1 and {n - 1}, got {holdout}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[holdout:], order[:holdout]


def holdout_split(dataset: Any, holdout: int, seed: int = 0, *, sort_rest: bool = False) -> tuple[Any, Any]:
    """Split ``dataset`` at random (fixed by ``seed``) into (rest, ``holdout`` items): a validation set for tuning.

    The indices are :func:`holdout_indices`'s; ``sort_rest`` puts the rest in index order (sequential
    reads of a memory-mapped file). A dataset with a ``subset(indices)`` method (e.g.
    :class:`~toolkit.data.cifar.CIFARTensorDataset`) returns two of its own kind; any other becomes
    two ``torch.utils.data.Subset``. Items are unchanged. Raises ValueError unless 0 < holdout < len(dataset).
    """
    rest, held = holdout_indices(len(dataset), holdout, seed)
    take = dataset.subset if hasattr(dataset, "subset") else partial(Subset, dataset)
    return take(sorted(rest) if sort_rest else rest), take(held)


def split_ids(
    ids: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    block_size: int = 1,
    groups: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split ids into (train, val) deterministically from ``seed``; both keep the input order.

    The split is drawn over units: single ids (default), runs of ``block_size`` consecutive
    ids in the given order (the figshare ids run in patient order: blocks of ~20 keep most
    patients on one side), or ``groups`` (one key per id, e.g. a patient id; a group is
    never split). ``round(val_fraction * units)`` units, at least one and at most all but
    one, go to val.

    Raises ValueError when there are fewer than 2 units (ids, blocks or groups), when
    ``val_fraction`` is not in (0, 1), or when ``groups`` does not match ``ids`` in length.
    """
    from .mri.io import natural_key  # OpenCV loads with it: only when ids are split, not for hold-outs

    ids = [str(i) for i in ids]
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if groups is not None:
        if len(groups) != len(ids):
            raise ValueError(f"groups has {len(groups)} entries but there are {len(ids)} ids")
        unit_of = [str(g) for g in groups]
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        unit_of = [str(k // block_size) for k in range(len(ids))]
    units = sorted(set(unit_of), key=natural_key)
    if len(units) < 2:
        raise ValueError(
            f"cannot split {len(ids)} id(s) into non-empty train and val sets: they form "
            f"{len(units)} unit(s) (block_size={block_size}, "
            f"groups={'given' if groups is not None else 'none'}); need >= 2"
        )
    n_val = min(max(1, round(val_fraction * len(units))), len(units) - 1)
    order = np.random.default_rng(seed).permutation(len(units))
    val_units = {units[k] for k in order[:n_val]}
    train = [i for i, u in zip(ids, unit_of) if u not in val_units]
    val = [i for i, u in zip(ids, unit_of) if u in val_units]
    return train, val


def record_units(records: Sequence[MRISlice], block_size: int = 1) -> dict[str, str]:
    """id → the unit a split never cuts: ``"patient <id>"`` where the record has a patient, else
    ``"block <k>"`` for runs of ``block_size`` consecutive patient-less records in the given order."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    unit, k = {}, 0
    for r in records:
        if r.patient is not None:
            unit[r.id] = f"patient {r.patient}"
        else:
            unit[r.id], k = f"block {k // block_size}", k + 1
    return unit


def fold_of_units(units: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """unit → fold in 0..folds-1: the units, naturally sorted, shuffled by ``seed`` and dealt out in turn,
    so fold sizes (in units) differ by at most one. Raises ValueError for fewer units than folds."""
    from .mri.io import natural_key

    units = sorted(set(units), key=natural_key)
    if folds < 2 or len(units) < folds:
        raise ValueError(f"cannot make {folds} folds of {len(units)} unit(s) (patients or id blocks); "
                         f"need folds >= 2 and at least one unit per fold")
    order = np.random.default_rng(seed).permutation(len(units))
    return {units[j]: k % folds for k, j in enumerate(order)}


def label_fraction(records: Sequence[MRISlice], fraction: float, seed: int = 0,
                   block_size: int = 1) -> list[MRISlice]:
    """Keep a share ``fraction`` (0 < fraction <= 1) of the units of ``records``: whole patients (or
    blocks of ``block_size`` patient-less ids, :func:`record_units`), never part of one.

    ``ceil(fraction * units)`` units (at least 1) are drawn: the units, naturally sorted, shuffled by
    ``numpy.random.default_rng(seed)``. The result is a sub-list of ``records`` in their order, and
    depends only on the records and ``seed`` (two arms with one seed and split get the same slices).
    Meant for the training part of a split, after val/test are set aside. Raises ValueError for a
    fraction outside (0, 1] or no records.
    """
    from .mri.io import natural_key

    records = list(records)
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if not records:
        raise ValueError("label_fraction got no records")
    unit = record_units(records, block_size)
    units = sorted(set(unit.values()), key=natural_key)
    order = np.random.default_rng(seed).permutation(len(units))
    keep = {units[j] for j in order[:max(1, math.ceil(fraction * len(units) - 1e-9))]}
    return [r for r in records if unit[r.id] in keep]


def split_records(
    records: Sequence[MRISlice], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
    block_size: int = 1, folds: int = 0, fold: int = 0,
) -> dict[str, list[MRISlice]]:
    """Split slices into "train", "val" (and "test" when ``test_fraction`` > 0), never splitting a patient.

    The units drawn are patients (``record.patient``) where known, else runs of ``block_size``
    consecutive patient-less records in the given order (:func:`record_units`). Fractions count
    units, not slices. "test" is drawn first (seed + 1), then "val" from the rest with
    ``val_fraction / (1 - test_fraction)`` (seed), as :func:`split_ids`. With ``folds`` >= 2,
    "val" is instead fold ``fold`` of a ``folds``-fold partition of the rest (:func:`fold_of_units`,
    seed): over the folds every slice is validated exactly once. ``val_fraction`` 0 (without folds): no
    validation, "val" empty, every patient outside "test" trains (nnU-Net's ``all`` fold). Each list keeps the
    input order. Deterministic for given records and seed.

    Raises ValueError for fractions outside [0, 1) with ``val_fraction + test_fraction < 1``,
    duplicate ids, a fold outside 0..folds-1, or too few units to fill every split.
    """
    records = list(records)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction):
        raise ValueError(f"need 0 <= val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction, "
                         f"got {val_fraction} and {test_fraction}")
    if folds and not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1} for {folds} folds, got {fold}")
    unit = record_units(records, block_size)
    need = (3 if test_fraction > 0 else 2) - (not folds and val_fraction == 0)
    if len(set(unit.values())) < need:
        raise ValueError(f"cannot split {len(records)} slice(s) into {need} non-empty sets: they form "
                         f"{len(set(unit.values()))} unit(s) (patients, or blocks of {block_size} slices without "
                         f"a patient id); need >= {need}")
    ids = [r.id for r in records]
    out: dict[str, list[str]] = {}
    if test_fraction > 0:
        ids, out["test"] = split_ids(ids, test_fraction, seed + 1, groups=[unit[i] for i in ids])
    if folds:
        fold_of = fold_of_units([unit[i] for i in ids], folds, seed)
        out["train"] = [i for i in ids if fold_of[unit[i]] != fold]
        out["val"] = [i for i in ids if fold_of[unit[i]] == fold]
    elif val_fraction == 0:
        out["train"], out["val"] = ids, []
    else:
        out["train"], out["val"] = split_ids(ids, val_fraction / (1 - test_fraction), seed,
                                             groups=[unit[i] for i in ids])
    by_id = {r.id: r for r in records}
    return {name: [by_id[i] for i in out[name]] for name in ("train", "val", "test") if name in out}


def save_split(path: str | os.PathLike, split: dict[str, Sequence[MRISlice]], **info: Any) -> Path:
    """Write ``split`` as JSON ``{**info, "train": [ids], "val": [ids], ...}`` (atomically); returns the path.

    ``info`` holds extra str/number fields, e.g. ``data_dir=..., source=...``; it must not use a split's name.
    """
    clash = set(info) & set(split)
    if clash:
        raise ValueError(f"info keys {sorted(clash)} clash with split names")
    return save_json(path, {**{k: str(v) if isinstance(v, Path) else v for k, v in info.items()},
                            **{name: [r.id for r in recs] for name, recs in split.items()}})


def load_split(path: str | os.PathLike, records: Sequence[MRISlice],
               names: Sequence[str] | None = None) -> dict[str, list[MRISlice]]:
    """Read a :func:`save_split` file back onto ``records``: split name → records, in the file's order.

    Every list-valued entry is a split (other entries are info); ``names`` limits the result
    (and the id check) to those splits, e.g. ``["test"]`` to score data that holds only them; a
    name the file lacks is simply absent from the result. Raises FileNotFoundError when ``path``
    is missing, :class:`~toolkit.data.errors.DataError` (a ValueError) when it holds no split or a
    returned split names ids absent from ``records`` (the message gives the count and examples).
    """
    path = Path(path)
    data = json.loads(path.read_text())
    by_id = {r.id: r for r in records}
    out = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or (names is not None and name not in names):
            continue
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{path}: {len(missing)} of the {len(ids)} ids of the {name!r} split are not among the "
                             f"{len(by_id)} slices found, e.g. {missing[:5]}; was it saved for other data "
                             "(another folder, channels or slice rule)?")
        out[name] = [by_id[i] for i in ids]
    if not any(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path} holds no split (no list of ids)")
    return out
