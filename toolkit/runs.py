"""The run folder of a training run: where it is, saving a resumable state, resuming from one.

States are saved every ``checkpoint_every`` optimizer steps and at the end of every
epoch into ``state/step-XXXXXXXX/`` (see :mod:`toolkit.state_folders`); ``--resume`` loads
the newest one after refusing any file that carries code; ``--resume auto`` does so when
the run has a state and starts it fresh otherwise (a requeued job runs the same command).
A state saved inside an epoch records how many batches of that epoch were done; the resumed
run skips exactly those (Accelerate's ``skip_first_batches`` over the same seeded per-epoch order).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.optim.lr_scheduler import LRScheduler

from .checkpoint import atomic_write, load_state_file
from .config import ConfigError, TrainConfig
from .ema import WeightEMA
from .optim import StepSchedule
from .state import TrainState
from .state_folders import STATE_MARKER, check_state_files, find_state, save_training_state

__all__ = ["resolve_run_dir", "resumes", "save_state", "folder_snapshot", "saved_config", "restore_config",
           "abandon_run", "refuse_resume", "restore_state", "stored_settings", "fit_end_summary", "changed_settings"]

#: settings a state stores (optimizer param groups, the scheduler's base LRs and schedule): a resume keeps its own
STORED_SETTINGS = ("optimizer", "lr", "weight_decay", "momentum", "scheduler", "warmup_fraction")


def resolve_run_dir(cfg: TrainConfig, recipe: str, accelerator: Accelerator) -> Path:
    """The run folder ``<output_dir>/<run name>``, created and proven writable; call on every process.

    The name is ``cfg.run_name``, else with ``cfg.resume`` (True or "auto") the newest ``<recipe>-*``
    run that holds a state, else ``<recipe>-<date>-<time>``; every process takes the main process's
    choice. Raises ConfigError when ``output_dir`` is no folder, when ``--resume`` (True) finds no
    state, when a new run would overwrite one that holds a state, or when the folder is not writable;
    ``--resume auto`` without a state starts a new run instead.
    """
    root = Path(cfg.output_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} exists and is not a folder")
    name = cfg.run_name
    if not name and cfg.resume:
        runs = sorted((p for p in root.glob(f"{recipe}-*") if find_state(p)), key=lambda p: p.name)
        if not runs and cfg.resume is True:
            raise ConfigError(f"--resume: no run of {recipe!r} with a saved state under {root}/")
        name = runs[-1].name if runs else ""
    if not name and accelerator.is_main_process:  # a new folder, even when another launch starts this second
        name = _claim_new_folder(root, f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    box = [name]
    broadcast_object_list(box)  # every process agrees on the main process's name
    run_dir = root / box[0]
    if cfg.resume is True and find_state(run_dir) is None:
        raise ConfigError(f"--resume: {run_dir} holds no complete state/ to resume from (--resume auto starts "
                          "it fresh then)")
    if not cfg.resume and find_state(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume (or --resume auto) to continue it "
                          "or pick another --run-name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:  # prove it is writable before any training starts
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=run_dir)
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"output_dir: cannot create or write the run folder {run_dir}: {err}") from err
    return run_dir


def _claim_new_folder(root: Path, base: str) -> str:
    """Create ``root/base`` (or ``base-2``, ``base-3``, ... when it exists: launches started in the same second,
    such as W&B sweep agents side by side) with an exclusive ``mkdir`` and return its name. When ``root`` cannot be
    written (:func:`resolve_run_dir` then names the error) or 999 such folders exist: ``base``, as before."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return base
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            (root / name).mkdir()
            return name
        except FileExistsError:
            continue
        except OSError:
            return name
    return base


def resumes(cfg: TrainConfig, run_dir: Path) -> bool:
    """Whether a fit in ``run_dir`` (from :func:`resolve_run_dir`) continues its newest state: with
    ``--resume`` always, with ``--resume auto`` when the folder holds a complete state."""
    return bool(cfg.resume) and find_state(run_dir) is not None


def folder_snapshot(run_dir: Path) -> dict:
    """``run_dir`` as a start finds it, for :func:`restore_config` and :func:`abandon_run`: its entry names and
    the bytes of its config.json (None when it has none)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    return {"names": names, "config": config.read_bytes() if config.is_file() else None}


def saved_config(before: dict) -> dict:
    """The settings of the config.json in a :func:`folder_snapshot` (what a resumed run last started with); {}
    when it had none or it is unreadable (then nothing can be compared with it)."""
    try:
        data = json.loads(before["config"] or b"")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def restore_config(accelerator: Accelerator, run_dir: Path, before: dict) -> None:
    """Put the config.json of a :func:`folder_snapshot` back, byte for byte (main process; nothing when there was
    none): a resume that trains nothing or is refused leaves the settings the run trained with."""
    if before["config"] is not None and accelerator.is_main_process:
        atomic_write(Path(run_dir) / "config.json", lambda f: f.write(before["config"]))


def fit_end_summary(run_dir: Path, epoch: int) -> dict | None:
    """The run's ``summary.json`` when its fit-end steps (``on_fit_end`` callbacks: the post-processing choice,
    figures, the model artifact) finished after ``epoch``, the epoch of its newest state: the summary, written
    after them, counts that epoch; else None. The main process reads it and every process gets its answer."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    done = [summary if isinstance(summary, dict) and summary.get("epochs_completed") == epoch else None]
    broadcast_object_list(done)
    return done[0]


def abandon_run(accelerator: Accelerator, run_dir: Path, before: dict) -> None:
    """Put ``run_dir`` back as :func:`folder_snapshot` ``before`` found it (main process): config.json as it was
    (or removed), every entry made since removed, then the folder itself when empty."""
    if not accelerator.is_main_process:
        return
    run_dir = Path(run_dir)
    restore_config(accelerator, run_dir, before)
    for entry in list(run_dir.iterdir()) if run_dir.is_dir() else []:
        if entry.name not in before["names"] or (entry.name == "config.json" and before["config"] is None):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    try:
        run_dir.rmdir()  # only when empty
    except OSError:
        pass


def refuse_resume(accelerator: Accelerator, run_dir: Path, before: dict, cfg: TrainConfig, what: str,
                  keys=None) -> ConfigError:
    """The error for a resume that cannot continue ``run_dir`` with these settings (``what`` says why), naming
    the settings of ``cfg`` that differ from those of the :func:`folder_snapshot` ``before`` (only ``keys`` when
    given). Puts its config.json back (:func:`restore_config`), so the run folder stays as it was; call on every
    process."""
    restore_config(accelerator, run_dir, before)
    changed = changed_settings(before, cfg, keys)
    return ConfigError(f"--resume: {what}; " + (f"changed: {', '.join(changed)}" if changed else
                                               "no setting changed since it started (the data read differ)")
                       + ". A resumed run keeps the settings and data it started with: resume with those "
                       f"({Path(run_dir) / 'config.json'}) or train the new ones under another --run-name")


def changed_settings(before: dict, cfg: TrainConfig, keys=None) -> list[str]:
    """``"key saved -> now"`` for each setting of ``cfg`` (only ``keys`` when given; never ``resume`` and
    ``run_name``) that differs from the config.json of the :func:`folder_snapshot` ``before``; values compared as
    JSON holds them (a tuple equals its saved list)."""
    saved, now = saved_config(before), vars(cfg)
    names = [k for k in now if k not in ("resume", "run_name")] if keys is None else keys
    as_saved = {k: json.loads(json.dumps(now[k], default=str)) for k in names if k in now}
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in names
            if k in saved and k in as_saved and saved[k] != as_saved[k]]


def stored_settings(cfg: TrainConfig) -> list[str]:
    """The :data:`STORED_SETTINGS` that apply to ``cfg`` (``momentum`` only for SGD): a resume that trains on
    goes on with the state's values of them, whatever the command line says."""
    return [k for k in STORED_SETTINGS if k != "momentum" or cfg.optimizer == "sgd"]


def save_state(accelerator: Accelerator, run_dir: Path, state: TrainState, scheduler: LRScheduler,
               keep: int, ema: WeightEMA | None = None) -> Path:
    """Save a resumable state now (call on every process); the newest ``keep`` are kept. Returns its folder.
    The scheduler's state goes into ``scheduler.pt``, the weight average's (when there is one) into ``ema.pt``."""
    extra = {"scheduler": scheduler.state_dict()}
    if ema is not None and accelerator.is_main_process:  # only the main process writes the extra files
        extra["ema"] = ema.state_dict()
    return save_training_state(accelerator, run_dir, state.to_json(), extra=extra, keep=keep)


def restore_state(accelerator: Accelerator, run_dir: Path, cfg: TrainConfig, scheduler: LRScheduler,
                  schedule: StepSchedule, steps_per_epoch: int, ema: WeightEMA | None = None) -> TrainState:
    """Load the newest state of ``run_dir`` into the prepared objects and return its :class:`TrainState`.

    Model, optimizer, grad scaler and RNG states go through ``accelerator.load_state``;
    ``scheduler`` (whose multiplier is ``schedule``) gets its saved state dict. When
    ``cfg.epochs`` differs from the saved plan and no time budget is set, ``schedule`` is
    refitted to the new number of epochs, no fewer than those done (a finished warm-up stays finished); when the
    optimizer steps per epoch differ from the saved run's (``steps_per_epoch``: another batch size, accumulation
    or number of processes), it is refitted to end with the last planned epoch at the new pace. A run that stopped
    early continues when ``cfg.patience`` no longer stops it (0, or more than its epochs without improvement).
    ``ema`` (the run's weight average, or None) gets the saved ``ema.pt``; a state saved without one
    (``--ema-decay`` added on resume) starts the average from the restored weights.
    """
    state_dir = find_state(run_dir)
    check_state_files(state_dir)  # refuses pickles that carry code before anything else reads them
    try:
        state = TrainState.from_json(json.loads((state_dir / STATE_MARKER).read_text()))
    except ValueError as err:  # not JSON, or not a trainer state: named with the file, before any tensor loads
        raise ConfigError(f"--resume: {state_dir / STATE_MARKER} is not a readable trainer state ({err})") from None
    if (state_dir / "custom_checkpoint_0.pkl").is_file():  # a state of the older layout (checked above)
        accelerator.register_for_checkpointing(scheduler)
    accelerator.load_state(str(state_dir))
    if (state_dir / "scheduler.pt").is_file():
        scheduler.load_state_dict(load_state_file(state_dir / "scheduler.pt"))
    if ema is not None:
        if (state_dir / "ema.pt").is_file():
            ema.load_state_dict(load_state_file(state_dir / "ema.pt"))
        else:
            accelerator.print(f"{state_dir} holds no weight average (ema.pt): the average starts from its weights")
            ema.module.load_state_dict(ema.source.state_dict())
    # another pace: other optimizer steps per epoch, or (saved inside an epoch) batches of another size whose
    # count of steps per epoch happens to be the same (batch 8 -> 4 with --grad-accum-steps 2)
    seen = (state.partial or {}).get("seen")
    other_batches = bool(state.batch_in_epoch) and seen is not None and \
        seen != state.batch_in_epoch * cfg.batch_size * accelerator.num_processes
    regeared = state.steps_per_epoch is not None and (state.steps_per_epoch != steps_per_epoch or other_batches)
    state.steps_per_epoch = steps_per_epoch
    if cfg.max_minutes <= 0 and state.planned_epochs != max(cfg.epochs, state.epoch):  # --epochs changed: refit
        state.planned_epochs = max(cfg.epochs, state.epoch)  # never below the epochs done (summary, messages)
        schedule.refit(steps_per_epoch * max(cfg.epochs, 1), scheduler.last_epoch)
    if regeared and state.planned_epochs > state.epoch:  # another batch size, accumulation or processes
        if state.batch_in_epoch:  # saved inside an epoch: skip its images done ("seen", all processes) in new batches
            partial, old = dict(state.partial or {}), state.batch_in_epoch
            state.batch_in_epoch = round(partial.get("seen", 0) / (cfg.batch_size * accelerator.num_processes))
            partial["loss_sum"] = partial.get("loss_sum", 0.0) * state.batch_in_epoch / old  # same mean per batch
            state.partial = partial
        done = min(steps_per_epoch, math.ceil(state.batch_in_epoch / cfg.grad_accum_steps))  # of this epoch
        schedule.refit(scheduler.last_epoch + steps_per_epoch * (state.planned_epochs - state.epoch) - done,
                       scheduler.last_epoch)
        accelerator.print(f"{steps_per_epoch} optimizer steps per epoch, of other batches than when {state_dir} was "
                          f"saved (batch size, gradient accumulation or processes changed): the LR schedule was "
                          f"refitted to end with epoch {state.planned_epochs}")
    if state.stop_reason and not 0 < cfg.patience <= state.epochs_without_improvement:
        accelerator.print(f"--patience {cfg.patience}: continuing a run that had stopped early ({state.stop_reason})")
        state.stop_reason = None
    where = f"after epoch {state.epoch}"
    if state.batch_in_epoch:
        where += f" and {state.batch_in_epoch} batches of epoch {state.epoch + 1}"
    accelerator.print(f"resumed {run_dir} from {state_dir} {where} (optimizer step {state.global_step})")
    return state
