"""Shared test set-up and fixtures: no network, no W&B account, a fresh Accelerate state per test.

Helpers the tests import live in utils.py; nothing imports from this file.
"""

import os

import pytest

from .utils import SHARED_DATA

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own W&B dir and a clean Accelerate singleton state."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip the test when it is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
