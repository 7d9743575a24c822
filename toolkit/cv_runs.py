"""Training side of a cross-validation (:mod:`toolkit.crossval` scores it): every fold of the recipe in turn into
``<root>/fold<k>/``, then optionally ``<root>/all/`` (``all1`` …): models of every patient the folds covered
(nnU-Net's ``all`` fold) that take the post-processing chosen out of fold. Each run is kept when finished and
resumed when interrupted (:func:`toolkit.compare.train_run`)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Sequence

from .checkpoint import save_json
from .compare import given_flags, has_trained, split_args, started_with, train_run
from .config_file import given_settings
from .postprocess import POSTPROCESS_FILE

__all__ = ["train_folds", "train_final", "check_final", "final_name", "final_runs", "share_postprocess",
           "CV_ARGS_FILE", "FINAL_RUN"]

CV_ARGS_FILE = "cv_args.json"  # the --folds and recipe arguments a CV folder was started with
FINAL_RUN = "all"  # the run on every patient beside the folds (nnU-Net's name for it)


def train_folds(folds: int, argv: Sequence[str], root: Path, *, recipe: str) -> list[Path]:
    """Train fold 0..folds-1 in turn into ``root/fold<k>`` with the recipe script ``recipe`` (a path; give it
    absolute, as ``recipes/brain_mri_cv.py`` does, to run from any folder): finished folds are kept, interrupted ones
    resumed.

    ``root/cv_args.json`` records ``folds`` and the recipe arguments ``argv``; once a fold has trained (a state or
    a summary), a start with others raises ValueError naming both (its folds would otherwise be kept from other
    settings)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    clash = given_flags(argv, {"--folds", "--fold", "--run-name", "--output-dir", "--resume"})
    if clash:
        raise ValueError(f"{sorted(clash)} are set by the cross-validation itself; leave them out of ARGS")
    trained = any(has_trained(d) for d in root.glob("fold*") if d.is_dir())
    started = started_with(root / CV_ARGS_FILE, {"folds": folds, "args": list(argv)}, trained)
    if started is not None:
        raise ValueError(f"{root} was started with --folds {started.get('folds')} and the recipe arguments "
                         f"{shlex.join(started.get('args', []))!r}, now --folds {folds} and {shlex.join(argv)!r}; "
                         "continue it with those, or give the new ones another --name")
    return [train_run(recipe, [*argv, "--folds", str(folds), "--fold", str(k), "--output-dir", str(root)],
                      f"fold{k}", root) for k in range(folds)]


def train_final(argv: Sequence[str], root: Path, *, recipe: str, count: int = 1) -> list[Path]:
    """After the folds: ``count`` models of every patient the folds covered (nnU-Net's ``all`` fold), trained with the
    recipe script ``recipe`` as the folds were: ``root/all``,
    then ``root/all1`` … with ``--seed`` the folds' seed + 1, + 2 … (another initialisation and augmentation draw).

    The recipe arguments ``argv`` of the folds with ``--val-fraction 0`` (any ``--val-fraction`` in them dropped: the
    folds do not use it; ``--patience`` too: it counts validations): no validation, so ``best.pth`` holds the last
    epoch's weights and no post-processing is chosen in the run; a ``--test-fraction`` hold-out stays out, the same
    patients as in the folds. Then :func:`share_postprocess` gives each the post-processing chosen out of fold. Kept
    when finished, resumed when interrupted, like a fold. Raises ValueError for ``count`` < 1, or ``count`` > 1 with
    arguments whose data the seed draws (:func:`check_final`). Returns the run folders."""
    check_final(argv, count)
    dropped, rest = split_args(list(argv), {"val-fraction", "patience"})
    if given_flags(dropped, {"--patience"}):
        print(f"{FINAL_RUN}: --patience left out (it counts validations; the run of every patient has none)", flush=True)
    base = [*rest, "--val-fraction", "0", "--output-dir", str(root)]
    runs = [train_run(recipe, base, final_name(0), root)]
    if count > 1:  # the others: the folds' seed (as the run read it, default included) + k
        seed = int(json.loads((root / "fold0" / "config.json").read_text())["seed"])
        unseeded = split_args(base, {"seed"})[1]
        runs += [train_run(recipe, [*unseeded, "--seed", str(seed + k)], final_name(k), root) for k in range(1, count)]
    share_postprocess(root)
    return runs


def final_name(k: int) -> str:
    """The folder of the k-th model of every patient: ``all``, ``all1``, ``all2`` …"""
    return FINAL_RUN if k == 0 else f"{FINAL_RUN}{k}"


def check_final(argv: Sequence[str], count: int) -> None:
    """ValueError unless ``count`` models of every patient can train from the recipe arguments ``argv`` (with the
    settings of a ``--config`` file in them): count >= 1; for more than one, their ``--seed`` differs, and the seed
    also draws a ``--test-fraction`` hold-out (> 0), a ``--label-fraction`` subset (< 1) and synthetic data (no
    ``--data-dir``), so those would give each model other data."""
    if count < 1:
        raise ValueError(f"--final takes a number of models >= 1, got {count}")
    if count == 1:
        return
    settings = given_settings(argv)
    drawn = [f"--{key.replace('_', '-')} {settings[key]}" for key, unseeded in (("test_fraction", 0), ("label_fraction", 1))
             if key in settings and not _number_is(settings[key], unseeded)]
    if drawn or not settings.get("data_dir", "").strip():
        what = " and ".join(drawn) if drawn else "synthetic data (no --data-dir)"
        raise ValueError(f"--final {count} trains its models with other seeds, and the seed also draws {what}: each "
                         f"model would train on other slices; leave that out, or use --final 1")


def _number_is(word: str, value: float) -> bool:
    """Whether ``word`` reads as the number ``value``; False for a word that is not a number (the recipe names it
    when it runs)."""
    try:
        return float(word) == value
    except ValueError:
        return False


def final_runs(root: Path) -> list[Path]:
    """The finished models of every patient of the CV folder ``root``: ``all``, ``all1`` … in order."""
    found, k = [], 0
    while (root / final_name(k) / "summary.json").is_file():
        found.append(root / final_name(k))
        k += 1
    return found


def share_postprocess(root: Path) -> list[Path]:
    """Copy the CV's out-of-fold ``postprocess.json`` into each finished model of every patient (atomically), so
    that ``evaluate``/``predict --weights root/all`` apply it; each copy names its source in ``copied_from``.
    Returns the files written (none when there is no such model or no out-of-fold choice yet)."""
    source = root / POSTPROCESS_FILE
    if not source.is_file():
        return []
    data = json.loads(source.read_text())
    return [save_json(run / POSTPROCESS_FILE, {**data, "copied_from": f"{source}: chosen on the folds' out-of-fold "
                                                                        f"predictions, applied to the model of {run}"})
            for run in final_runs(root)]
