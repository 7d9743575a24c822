"""Weights & Biases through Accelerate's tracker, offline by default.

One W&B run per launch: Accelerate creates trackers on the main process only. The
run lives in ``<run dir>/wandb/``; ``wandb sync <run dir>/wandb/offline-run-*``
uploads an offline run later.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["tracker_kwargs", "start_tracking", "update_config", "log_images", "set_summary", "wandb_run", "run_label"]

FOLD = re.compile(r"fold\d+")  # the name of a cross-validation fold's run folder: <cv>/fold<k>
# the names the multi-run drivers give the runs they train inside their own folder, the same in every such folder:
# a CV's folds, an SSL curve's (toolkit.ssl_curve) pretraining and its points f<fraction>-s<seed>-<arm>
MEMBER = re.compile(rf"{FOLD.pattern}|pretrain|f[0-9.e+-]+-s\d+-(pretrained|scratch)")


def run_label(run_dir: Path) -> str:
    """The name W&B knows a run folder by: its name, or ``<group>-<name>`` for a run a driver trained inside its
    own folder under a name every such folder has (:data:`MEMBER`: a CV's ``<cv>/fold<k>``, an SSL curve's
    ``<curve>/pretrain`` and ``<curve>/f0.1-s0-pretrained``), with characters W&B refuses in ids and artifact
    names replaced by ``-``."""
    run_dir = Path(run_dir)
    name = run_dir.name
    if MEMBER.fullmatch(name) and run_dir.parent.name:
        name = f"{run_dir.parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def tracker_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator(...)``: ``log_with="wandb"`` unless W&B is disabled."""
    return {"log_with": None if cfg.wandb_mode == "disabled" else "wandb"}


def start_tracking(accelerator, cfg, recipe: str, run_dir: Path) -> None:
    """``init_trackers`` with the whole config; the run is named and identified by the run folder
    (:func:`run_label`: a CV fold by its CV too), so a resumed run continues the same W&B run."""
    if cfg.wandb_mode == "disabled":
        return
    label = run_label(run_dir)
    init = {"name": label, "id": label.replace(".", "-"), "resume": "allow", "dir": str(run_dir),
            "mode": cfg.wandb_mode, "group": recipe, "job_type": "train"}
    config = {**asdict(cfg), "recipe": recipe, "num_processes": accelerator.num_processes,
              "mixed_precision": accelerator.mixed_precision}
    accelerator.init_trackers(cfg.wandb_project, config=config, init_kwargs={"wandb": init})


def wandb_run(accelerator):
    """The live ``wandb`` run on the main process, else None (other processes, W&B disabled)."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return None
    try:
        return accelerator.get_tracker("wandb", unwrap=True)
    except (ValueError, KeyError):
        return None


def update_config(accelerator, cfg) -> None:
    """Bring the W&B run's config up to date with ``cfg`` (a setting a recipe settled from its data after the
    run started, e.g. brain_mri's ``in_channels`` 0); nothing without a live run."""
    run = wandb_run(accelerator)
    if run is not None:
        run.config.update(asdict(cfg), allow_val_change=True)


def log_images(accelerator, images: dict[str, Path], step: int) -> None:
    """Log PNG files as ``wandb.Image`` under ``figures/<name>`` at ``step``."""
    run = wandb_run(accelerator)
    if run is None or not images:
        return
    import wandb

    run.log({f"figures/{name}": wandb.Image(str(path)) for name, path in images.items()}, step=step)


def set_summary(accelerator, summary: dict[str, Any]) -> None:
    """Write ``summary`` (the Trainer's summary.json) to the W&B run summary.

    Scalars go in as they are (best_value, best_epoch, trainable_params, train_images_per_s, ...);
    ``best_<monitor>`` repeats the best value under the metric's name; the last epoch's record
    goes in as ``final/<key>``. W&B would otherwise show the last logged value of each metric.
    """
    run = wandb_run(accelerator)
    if run is None:
        return
    for key, value in summary.items():
        if isinstance(value, (int, float, str, bool)):
            run.summary[key] = value
    if summary.get("monitor") and summary.get("best_value") is not None:
        run.summary[f"best_{summary['monitor']}"] = summary["best_value"]
    for key, value in (summary.get("final") or {}).items():
        if isinstance(value, (int, float)):
            run.summary[f"final/{key}"] = value
