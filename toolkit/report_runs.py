"""Reading for `toolkit report`: run folders of the output contract and comparison files.

A run folder holds ``config.json``, ``history.json``, ``summary.json`` (once finished),
``figures/*.png`` and optionally ``eval_*.json``, ``encoder.json``, ``split.json``.
Comparison files (:mod:`toolkit.comparison`) are ``comparison.json`` or
``<name>.comparison.json`` in the runs folder and ``comparison.json`` in a run folder.
Nothing here knows a recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comparison import Comparison, ComparisonError
from .tracking import FOLD

__all__ = ["Run", "Group", "load_run", "is_run", "find_runs", "find_groups", "find_comparisons", "curve",
           "curve_keys", "ensemble_members", "NOT_CURVES"]

NOT_CURVES = {"epoch", "val_samples", "num_images", "time_s"}


@dataclass
class Run:
    """One run folder: its parsed JSON files (summary None while the run is unfinished)."""

    name: str
    path: Path
    config: dict
    history: list[dict]
    summary: dict | None
    extras: dict[str, Any] = field(default_factory=dict)  # eval_<split>.json, encoder.json, split.json

    @property
    def recipe(self) -> str:
        return (self.summary or {}).get("recipe") or self.config.get("recipe") or "unknown"

    @property
    def monitor(self) -> str | None:
        return (self.summary or {}).get("monitor")

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def best_record(self) -> dict | None:
        """The history record of the best epoch (the last one when the run has no summary yet)."""
        epoch = (self.summary or {}).get("best_epoch")
        by_epoch = {h.get("epoch"): h for h in self.history}
        return by_epoch.get(epoch) or (self.history[-1] if self.history else None)

    def value(self, key: str) -> Any:
        """``key`` from the summary, else from the best epoch's history record."""
        if self.summary and key in self.summary:
            return self.summary[key]
        return (self.best_record or {}).get(key)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from err


def load_run(path: Path) -> Run:
    """Parse a run folder. Raises ValueError naming the file when a JSON file is unreadable or malformed."""
    path = Path(path)
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    history = _read_json(path / "history.json") if (path / "history.json").is_file() else []
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{path / 'history.json'}: expected a list of per-epoch objects")
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    if summary is not None and not isinstance(summary, dict):
        raise ValueError(f"{path / 'summary.json'}: expected a JSON object")
    extras = {}
    for file in sorted(path.glob("eval_*.json")) + [path / "encoder.json", path / "split.json"]:
        if file.is_file():
            extras[file.stem] = _read_json(file)
    return Run(path.name, path, config, history, summary, extras)


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder (it holds config.json or history.json)."""
    return (folder / "config.json").is_file() or (folder / "history.json").is_file()


def find_runs(root: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Run folders under ``root`` (those with config.json or history.json), sorted by name, and the (folder,
    reason) of those that could not be read. A folder that is no run itself is searched one level deeper, so
    the folds of a cross-validation (``<root>/<cv>/fold<k>/``) are runs named ``<cv>/fold<k>``."""
    runs, bad = [], []
    root = Path(root)
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in [top] if is_run(top) else sorted(p for p in top.iterdir() if p.is_dir() and is_run(p)):
            try:
                run = load_run(folder)
            except ValueError as err:
                bad.append((folder, str(err)))
                continue
            run.name = folder.relative_to(root).as_posix()
            runs.append(run)
    return runs, bad


@dataclass
class Group:
    """A folder of runs that is no run itself (a cross-validation ``<root>/<cv>/`` with its ``fold<k>/``) and the
    parsed ``eval_*.json`` written into it by stem (``toolkit evaluate --weights <cv>``: the folds' ensemble)."""

    name: str
    path: Path
    evals: dict[str, Any]


def find_groups(root: Path) -> tuple[list[Group], list[tuple[Path, str]]]:
    """The folders under ``root`` that are no run but hold run folders and ``eval_*.json`` files, sorted by name,
    and the (file, reason) of those eval files that are unreadable."""
    groups, bad = [], []
    for top in sorted(p for p in Path(root).iterdir() if p.is_dir() and not is_run(p)):
        files = sorted(top.glob("eval_*.json"))
        if not files or not any(is_run(p) for p in top.iterdir() if p.is_dir()):
            continue
        evals = {}
        for file in files:
            try:
                evals[file.stem] = _read_json(file)
            except ValueError as err:
                bad.append((file, str(err)))
        groups.append(Group(top.name, top, evals))
    return groups, bad


def find_comparisons(root: Path) -> tuple[list[tuple[Path, Comparison]], list[tuple[Path, str]]]:
    """Comparison files under ``root`` (``comparison.json``, ``*.comparison.json``, ``<folder>/comparison.json``),
    sorted by path, and the (file, reason) of those that are unreadable or do not follow the format."""
    root = Path(root)
    files = sorted({*root.glob("comparison.json"), *root.glob("*.comparison.json"), *root.glob("*/comparison.json")})
    found, bad = [], []
    for file in files:
        try:
            found.append((file, Comparison.load(file)))
        except ComparisonError as err:
            bad.append((file, str(err)))
    return found, bad


def ensemble_members(data: Any) -> list[str]:
    """The member runs of an ``eval_*.json`` that scored an ensemble (``toolkit evaluate`` with several
    ``--weights`` writes ``eval_<split>_ensemble.json`` beside the first member): the folder names of its
    ``weights`` files, in order (a cross-validation fold as ``<cv>/fold<k>``); [] for the evaluation of one model."""
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(weights, list) or len(weights) < 2:
        return []
    folders = [Path(str(w)).parent for w in weights]
    return [f"{f.parent.name}/{f.name}" if FOLD.fullmatch(f.name) and f.parent.name else f.name
            for f in folders]


def curve(run: Run, key: str) -> list[tuple[float, float]]:
    """(epoch, value) of ``key`` over the run's history."""
    return [(h["epoch"], h[key]) for h in run.history if key in h and "epoch" in h]


def curve_keys(history: list[dict]) -> list[str]:
    """Numeric per-epoch keys worth a chart, in first-seen order."""
    keys: list[str] = []
    for record in history:
        for key, value in record.items():
            if key not in keys and key not in NOT_CURVES and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                keys.append(key)
    return keys
