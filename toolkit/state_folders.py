"""The resumable training states of a run: ``state/step-XXXXXXXX/`` folders, written so that a kill loses none.

Each state is written completely into a hidden temporary folder, fsynced, and renamed into place; only then is
the one-line pointer ``state/latest`` replaced (atomically, :func:`~toolkit.checkpoint.atomic_write`) and the
oldest states beyond ``keep`` pruned. A kill at any instant leaves the previous state whole. Every
pickle-based file of a state is read with ``weights_only=True`` before Accelerate loads it
(:func:`check_state_files`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import UnsafeFileError, _fsync_dir, _open_perms, atomic_write, load_state_file, save_json

__all__ = ["save_training_state", "find_state", "list_states", "check_state_files", "STATE_MARKER", "LATEST"]

STATE_MARKER = "trainer_state.json"  # written last: a state folder without it is incomplete
LATEST = "latest"  # state/latest: name of the newest complete state folder


def check_state_files(state_dir: str | os.PathLike) -> None:
    """Refuse a state folder whose pickle-based files carry code, before Accelerate loads them.

    Accelerate loads registered custom objects with ``weights_only=False`` and ignores an
    unreadable RNG file silently; this check reads every ``.bin``/``.pkl``/``.pt`` file with
    ``weights_only=True`` first and raises :class:`UnsafeFileError` naming the bad one.
    """
    state_dir = Path(state_dir)
    for file in sorted(state_dir.iterdir()):
        if file.suffix in (".bin", ".pkl", ".pt", ".pth"):
            load_state_file(file)
        elif file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except Exception as err:  # noqa: BLE001
                raise UnsafeFileError(f"{file} is not a valid safetensors file: {err}") from err


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def list_states(run_dir: str | os.PathLike) -> list[Path]:
    """Complete state folders ``state/step-*`` of a run, oldest first."""
    root = Path(run_dir) / "state"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_MARKER).is_file()]
    return sorted(found, key=_step_of)


def find_state(run_dir: str | os.PathLike) -> Path | None:
    """The state folder to resume from: the one ``state/latest`` names, else the newest complete one.

    Also accepts the older single-folder layout (``state/trainer_state.json``). None if no state.
    """
    root = Path(run_dir) / "state"
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        # a kill while the same step was saved again: the complete old copy is .old-<name> for a moment
        for named in (root / name, root / f".old-{name}") if name else ():
            if (named / STATE_MARKER).is_file():
                return named
    states = list_states(run_dir)
    if states:
        return states[-1]
    for legacy in (root, Path(run_dir) / "state.old"):
        if (legacy / STATE_MARKER).is_file():
            return legacy
    return None


def _settle_tree(folder: Path) -> None:
    """Give every file under ``folder`` the permissions of a plain ``open`` (safetensors writes the model 0o600)
    and fsync it, then the folder."""
    perms = _open_perms()
    for file in folder.rglob("*"):
        if file.is_file():
            os.chmod(file, perms)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def save_training_state(accelerator, run_dir: str | os.PathLike, trainer_state: dict[str, Any],
                        extra: dict[str, dict] | None = None, keep: int = 2) -> Path:
    """Save the full training state as ``run_dir/state/step-<global_step>/``. Call on every process.

    ``accelerator.save_state`` writes model (safetensors), optimizer, grad scaler and every
    process's RNG states into a hidden temporary folder; the main process adds ``extra``
    state dicts (e.g. ``{"scheduler": ...}`` as ``scheduler.pt``) and ``trainer_state.json``
    last, gives every file the umask's permissions and fsyncs it, renames the folder into place, points
    ``state/latest`` at it (atomic write) and deletes all but the newest ``keep`` complete states.
    """
    root = Path(run_dir) / "state"
    name = f"step-{int(trainer_state['global_step']):08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in [*root.glob(".tmp-*"), *root.glob(".old-*")]:  # left by a kill while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        import torch

        for key, state in (extra or {}).items():
            torch.save(state, tmp / f"{key}.pt")
        save_json(tmp / STATE_MARKER, trainer_state)
        _settle_tree(tmp)
        if final.exists():  # the same step saved again (epoch end right after a step checkpoint)
            old = root / f".old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write(root / LATEST, lambda f: f.write(name + "\n"), mode="w")
        for stale in list_states(run_dir)[:-max(1, keep)]:
            if stale != final:
                shutil.rmtree(stale, ignore_errors=True)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return final
