"""What the tests share (the fixtures stay in conftest.py; fake data-set writers in mri_fake.py, stl10_fake.py).

- paths and subprocesses: ``ROOT``, ``SHARED_DATA``, ``ACCELERATE``, ``run_env``, ``free_port`` (from bench/processes.py);
- a recipe file imported in-process: ``load_recipe``;
- tiny data and model for Trainer tests (seconds on a CPU): ``TinyImages``, ``TinyNet``, and a whole tiny fit:
  ``tiny_cfg``, ``fit_tiny``, ``Interrupt``, ``crash_in_epoch``;
- the offline W&B run file read back: ``read_records``, ``logged``.

Test modules import from here, never from conftest.py or from another ``test_*.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from bench.processes import free_port  # noqa: F401  (re-exported for the launch tests)
from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def run_env(**extra):
    """Environment for recipe subprocesses: offline, single-threaded-friendly, repo importable."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # set by an in-process W&B run of an earlier test: the child would share its service
    env.update({"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as the module ``recipe_<name>`` (registered in ``sys.modules``, where
    dataclasses look their module up) and return it."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- tiny data and model
class TinyImages(Dataset):
    """n images (1, 8, 8) uint8 with label 1 when the left half is brighter; optional random noise
    augmentation drawn from a generator that ``reseed`` resets (as the MRI dataset does)."""

    def __init__(self, n: int = 48, seed: int = 0, augment: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
        self.labels = (self.images[..., :4].mean(axis=(1, 2, 3)) > self.images[..., 4:].mean(axis=(1, 2, 3)))
        self.augment = augment
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i].astype(np.int16)
        if self.augment:
            img = img + self.rng.integers(-8, 9, size=img.shape)
        return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)), int(self.labels[i])


class TinyNet(nn.Module):
    """(N, 1, 8, 8) float → (N, 2) logits; records the dtype its conv produced (autocast check)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 2, 2)
        self.seen_dtype = None

    def forward(self, x):
        h = self.conv(x)
        self.seen_dtype = h.dtype
        h = torch.relu(self.bn(h))
        left, right = h[..., :4].mean(dim=(2, 3)), h[..., 4:].mean(dim=(2, 3))
        return self.head(torch.cat([left, right], dim=1))


# --------------------------------------------------------------------------- a tiny Trainer run
class Interrupt(Exception):
    """Raised from a test's hook to crash a fit where the test wants it (resume tests)."""


def crash_in_epoch(epoch: int):
    """A callback for :func:`fit_tiny` (``callbacks=[...]``) that raises :class:`Interrupt` at the end of
    ``epoch`` (1-based), after its validation and before that epoch's state is saved."""
    class Crash:
        def on_epoch_end(self, trainer, state, record, sample):
            if state.epoch == epoch:
                raise Interrupt()

    return Crash()


def tiny_cfg(tmp_path, **kw):
    """A TrainConfig for :func:`fit_tiny`: run ``t`` under ``tmp_path/runs``, 4 epochs of batch 8, no W&B."""
    base = TrainConfig(output_dir=str(tmp_path / "runs"), run_name="t", epochs=4, batch_size=8, lr=0.05,
                       num_workers=0, wandb_mode="disabled", warmup_fraction=0.0)
    return replace(base, **kw)


def fit_tiny(cfg, model=None, figures=None, train=None, callbacks=()):
    """Fit ``TinyNet`` on 48 augmented ``TinyImages`` (validation: 20 others, accuracy monitored).
    Returns (trainer, model, history)."""
    trainer = Trainer(cfg, recipe="tiny")
    model = model or TinyNet()
    history = trainer.fit(model, ClassificationObjective(), train or TinyImages(48, augment=True),
                          TinyImages(20, seed=1), metrics=[Accuracy()], monitor="accuracy", figures=figures,
                          param_budget=500_000, callbacks=callbacks)
    return trainer, model, history


# --------------------------------------------------------------------------- offline W&B run files
BLOCK = 32768
HEADER = 7


def read_records(path: str | Path) -> list:
    """The protobuf ``Record`` messages of an offline W&B run file (``run-*.wandb``).

    The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then
    32 KiB blocks of chunks (crc32 4 bytes, length 2 bytes LE, type 1 byte, data);
    chunk types FULL=1, FIRST=2, MIDDLE=3, LAST=4 join into protobuf ``Record`` messages.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(path: str | Path, timeout_s: float = 60.0) -> list:
    """:func:`read_records` of a run file once W&B has finished writing it (its ``exit`` record is there).

    W&B's service may still be flushing the file when ``end_training()`` returns: a record cut short reads as
    corrupt protobuf, and the last ones may be missing. Re-read until the file is whole, for ``timeout_s``."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        late = time.monotonic() > deadline
        try:
            records = read_records(path)
        except DecodeError:
            if late:
                raise
        else:
            if late or (records and records[-1].WhichOneof("record_type") == "exit"):
                return records
        time.sleep(0.5)


def logged(path: str | Path) -> tuple[list[dict], dict]:
    """(history rows as dicts, final summary dict) of an offline run file, once it is completely written."""
    history, summary = [], {}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.summary.update})
    return history, summary
