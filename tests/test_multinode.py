"""The multi-node path on one machine: two `accelerate launch --num_machines 2` commands train one run together."""

import json

import pytest
import torch

from bench.processes import run_variant
from bench.train_job import weights_digest


def test_two_machines_train_one_run(tmp_path):
    job = ["--images", "96", "--epochs", "1", "--global-batch", "32", "--width", "8", "--depth", "1"]
    res = run_variant("machines", tmp_path, job, precision="no", timeout=300)
    ranks = res["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1]  # both ranks finished and wrote their record
    assert all(r["num_processes"] == 2 for r in ranks)
    assert res["run_dirs"] == ["job"]  # one run folder, shared by both machines
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    run_dir = tmp_path / "runs" / "job"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["epochs_completed"] == 1
    best = torch.load(run_dir / "best.pth", map_location="cpu", weights_only=True)
    assert weights_digest(best) == ranks[0]["weights_sha256"]  # one epoch: the best weights are the final ones


def test_a_hung_launch_is_killed_and_reported(tmp_path):
    # one command that cannot finish in time: killed with its workers, the error names the timeout and the log
    job = ["--images", "96", "--epochs", "1", "--global-batch", "32", "--width", "8", "--depth", "1"]
    with pytest.raises(RuntimeError, match=r"(?s)hung.*timeout 1 s.*killed after the timeout"):
        run_variant("one", tmp_path, job, precision="no", timeout=1)
    assert (tmp_path / "launch0.log").is_file()
