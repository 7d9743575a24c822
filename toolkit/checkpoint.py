"""Atomic writes of weights, JSON and the resumable training state.

Nothing already written is lost: every file is written to a temporary name in the
same folder, flushed to disk, then renamed over the target (``os.replace`` is atomic
on POSIX). The training state folder is swapped in the same way: the new state is
written completely to ``state.tmp/`` and only then takes the place of ``state/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "atomic_write",
    "save_json",
    "save_weights",
    "load_weights",
    "save_training_state",
    "find_state",
    "STATE_MARKER",
]

STATE_MARKER = "trainer_state.json"  # written last: a state folder without it is incomplete


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, default=_json_default)
    return atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save a plain state dict (tensors moved to CPU) atomically, loadable with ``weights_only=True``."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda f: torch.save(cpu, f))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict written by :func:`save_weights`; refuses pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot load weights from {path}: {err}") from err
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def find_state(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete state folder of a run (``state/``, else ``state.old/``), or None."""
    for name in ("state", "state.old"):
        candidate = Path(run_dir) / name
        if (candidate / STATE_MARKER).is_file():
            return candidate
    return None


def save_training_state(accelerator, run_dir: str | os.PathLike, trainer_state: dict[str, Any]) -> Path:
    """Save the full training state to ``run_dir/state`` atomically. Call on every process.

    ``accelerator.save_state`` writes model, optimizer, registered objects (the LR
    scheduler), the grad scaler and every process's RNG states into ``state.tmp/``;
    the main process adds ``trainer_state.json`` (epoch, history, best metric) last,
    fsyncs the files, then swaps the folder in place of ``state/``.
    """
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / "state", run_dir / "state.tmp", run_dir / "state.old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        save_json(tmp / STATE_MARKER, trainer_state)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
