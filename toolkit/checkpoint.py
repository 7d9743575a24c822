"""Atomic writes of weights and JSON; loads that refuse code.

Nothing already written is lost: every file is written to a temporary name in the
same folder, flushed to disk, then renamed over the target (``os.replace`` is atomic
on POSIX). The resumable training states (folders of such files) are
:mod:`toolkit.state_folders`.

Every pickle-based file is loaded with ``torch.load(weights_only=True)``; a file that
carries code (a ``__reduce__`` that calls a function) is refused before it can run.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

# torch is imported where tensors are saved or loaded, so atomic_write / save_json serve torch-free code
# (toolkit.onnx_predict)

__all__ = [
    "atomic_write",
    "save_json",
    "save_weights",
    "load_weights",
    "save_safetensors",
    "load_state_file",
    "UnsafeFileError",
    "plain_keys",
]



COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper puts it before every key of the module it wraps


def plain_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict with torch.compile's ``_orig_mod.`` prefix dropped from its keys (a compiled model's
    weights, as ``Accelerator.get_state_dict`` returns them under ``--dynamo_backend``, load into the plain
    model); other keys and the values are unchanged."""
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}


class UnsafeFileError(ValueError):
    """A weights or state file that cannot be loaded safely (it carries code, or is not a tensor file)."""


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


def _open_perms() -> int:
    """The permissions a plain ``open`` gives a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    The file gets the permissions of the one it replaces, or those a plain ``open`` would give (0o666 less the
    umask) rather than the temporary file's 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        perms = path.stat().st_mode & 0o7777
    except OSError:
        perms = _open_perms()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def json_safe(obj: Any) -> Any:
    """Copy of nested dicts/lists/tuples with NaN/inf floats as None (``null`` in JSON, which every parser reads;
    a bare ``NaN`` only Python's does) and NumPy/torch scalars as Python numbers; other values unchanged."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):  # numpy scalar, 0-d array or tensor
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, default=_json_default)
    return atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    torch = sys.modules.get("torch")  # a tensor means torch is loaded already
    if torch is not None and isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save a plain state dict (tensors moved to CPU; keys of a torch.compile'd model written as the plain
    model's, see :func:`plain_keys`) atomically, loadable with ``weights_only=True``."""
    import torch

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in plain_keys(state_dict).items()}
    return atomic_write(path, lambda f: torch.save(cpu, f))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict written by :func:`save_weights` (or by ``torch.save`` of a torch.compile'd model's
    state dict: its ``_orig_mod.`` prefixes are dropped); refuses pickled code (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return plain_keys(load_file(str(path)))
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot load weights from {path}: {err}") from err
    obj = load_state_file(path, what="weights")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return plain_keys(obj)


def save_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save a state dict of tensors as safetensors (no pickle, no code), atomically.

    Tensors sharing storage are cloned so each key holds its own data; keys as :func:`save_weights` writes them.
    """
    from safetensors.torch import save

    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in plain_keys(state_dict).items()}
    blob = save(cpu)
    return atomic_write(path, lambda f: f.write(blob))


def load_state_file(path: str | os.PathLike, what: str = "state") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, numbers, containers, NumPy RNG arrays only).

    Raises :class:`UnsafeFileError` naming the file when it names any other Python object
    (such as a pickled object whose ``__reduce__`` would run code: the code never runs), or
    when it is no readable torch file at all (``what`` names it in the message).
    """
    from accelerate.utils.other import load as accelerate_load  # adds NumPy array/dtype as safe globals

    try:
        return accelerate_load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors of many kinds
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise UnsafeFileError(
                f"refusing to load {path}: it names the Python object {found.group(1)}, not only tensors and "
                f"plain containers (weights_only=True); it may carry code, so nothing in it was run") from None
        if "TorchScript archive" in text:  # torch's own advice (weights_only=False) is no way out for a user
            raise UnsafeFileError(f"cannot load {what} from {path}: it is a TorchScript export (toolkit export "
                                  f"--format torchscript), not a state dict; give the run's best.pth (toolkit "
                                  f"predict also takes an .onnx export)") from None
        lines = [ln.strip() for ln in text.split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()]
        why = lines[0][:300] if lines else ""
        raise UnsafeFileError(f"cannot load {what} from {path}: not a readable torch file "
                              f"({type(err).__name__}: {why})") from None
