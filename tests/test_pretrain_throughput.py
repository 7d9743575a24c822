"""tools/pretrain_throughput.sh --dry-run (commands and JSON skeleton, no GPU) and its report on fabricated run
folders, the arithmetic checked against figures computed by hand."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.utils import ROOT, run_env
from toolkit.checkpoint import save_json

SCRIPT = ROOT / "tools" / "pretrain_throughput.sh"
sys.path.insert(0, str(ROOT / "tools"))
import pretrain_throughput_report as report  # noqa: E402


def test_dry_run_commands_and_skeleton(tmp_path):
    out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path / "w"), "--gpus", "4", "--images", "5000",
                          "--batch", "64"], cwd=ROOT, env=run_env(PATH="/usr/bin:/bin"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "w" / "pretrain_throughput.json").read_text())
    assert result["dry_run"] is True and result["gpu_count"] == 4 and result["images"] == 5000
    printed = [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert printed == result["commands"]
    writer = [shlex.split(c)[-1] for c in result["commands"] if "write_stl10_binary" in c]
    assert len(writer) == 1 and "(5000, 3, 96, 96)" in writer[0]
    launches = [shlex.split(c) for c in result["commands"] if "accelerate.commands.launch" in c]
    seen = set()
    for cmd in launches:
        flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
        seen.add((flag("--mixed_precision"), int(flag("--num_processes"))))
        assert flag("--batch-size") == "64" and flag("--epochs") == "2" and flag("--max-images") == "5000"
        assert flag("--data-dir") == str(tmp_path / "w" / "data" / "stl10") and "recipes/stl10_pretrain.py" in cmd
        assert flag("--run-name") == f"pretrain-{flag('--mixed_precision')}-{flag('--num_processes')}gpu"
    assert len(launches) == 4 and seen == {("bf16", 1), ("bf16", 4), ("fp16", 1), ("fp16", 4)}
    for precision in ("bf16", "fp16"):
        assert set(result["runs"][precision]) == {"1", "4"}
        assert all(f["images_per_s"] is None for f in result["runs"][precision].values())
        assert result["runs"][precision]["4"]["global_batch"] == 256
        row = result["estimate"][precision]
        assert row["efficiency"] is None and row["1"]["hours"] is None and row["8"]["hours"] is None
        assert row["8"]["images_per_s"] is None and row["8"]["basis"].startswith("estimated")
    assert not (tmp_path / "w" / "runs").exists() and not (tmp_path / "w" / "data").exists()  # nothing ran


@pytest.mark.parametrize("args,message", [(["--images", "x"], "--images"), (["--images", "1000"], "--images"),
                                          (["--batch", "0"], "--batch"), (["--gpus", "0"], "--gpus"),
                                          (["--bogus"], "unknown argument")])
def test_bad_arguments_are_refused(tmp_path, args, message):
    out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr


def test_missing_real_copy_is_named(tmp_path):
    out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path), "--gpus", "1"], cwd=ROOT,
                         env=run_env(STL10_DIR=str(tmp_path / "nope")), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "STL10_DIR" in out.stderr and "unlabeled_X.bin" in out.stderr


def fabricate(work, precision, procs, epoch_rates):
    run = work / "runs" / f"pretrain-{precision}-{procs}gpu"
    save_json(run / "history.json", [{"epoch": i + 1, "train_images_per_s": r} for i, r in enumerate(epoch_rates)])
    save_json(run / "summary.json", {"train_images_per_s": sum(epoch_rates) / len(epoch_rates), "wall_time_s": 9.0})


def test_report_arithmetic(tmp_path):
    work = tmp_path / "w"
    fabricate(work, "bf16", 1, [1000.0, 2000.0])  # epoch 2: 2,000 images/s on 1 GPU
    fabricate(work, "bf16", 4, [3000.0, 7200.0])  # epoch 2: 7,200 on 4 GPUs
    fabricate(work, "fp16", 1, [900.0, 1800.0])  # fp16 on 4 GPUs left nothing
    assert report.main(["--work", str(work), "--out", str(tmp_path / "r.json"), "--gpus", "4", "--images", "20000",
                        "--batch", "256"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    bf16 = result["estimate"]["bf16"]
    assert result["runs"]["bf16"]["4"]["images_per_s"] == 7200.0 and result["runs"]["bf16"]["4"]["global_batch"] == 1024
    assert result["runs"]["bf16"]["1"]["mean_images_per_s"] == 1500.0
    assert bf16["efficiency"] == pytest.approx(0.9)  # 7200 / (4 x 2000)
    assert bf16["1"]["hours"] == pytest.approx(1e7 / 2000 / 3600)  # 1.389 h
    assert bf16["8"]["images_per_s"] == pytest.approx(14400.0)  # 8 x 7200 / 4 = 8 x 2000 x 0.9
    assert bf16["8"]["hours"] == pytest.approx(1e7 / 14400 / 3600)  # 0.193 h
    assert bf16["1"]["basis"].startswith("measured") and bf16["8"]["basis"].startswith("estimated")
    fp16 = result["estimate"]["fp16"]
    assert fp16["1"]["hours"] == pytest.approx(1e7 / 1800 / 3600)
    assert fp16["efficiency"] is None and fp16["8"]["hours"] is None  # never a made-up figure


def test_report_one_and_eight_gpus(tmp_path):
    work = tmp_path / "w"
    fabricate(work, "bf16", 1, [500.0, 1000.0])
    fabricate(work, "bf16", 8, [4000.0, 6400.0])
    report.main(["--work", str(work), "--out", str(tmp_path / "8.json"), "--gpus", "8", "--images", "20000",
                 "--batch", "256"])
    eight = json.loads((tmp_path / "8.json").read_text())["estimate"]["bf16"]
    assert eight["efficiency"] == pytest.approx(0.8) and eight["8"]["images_per_s"] == pytest.approx(6400.0)
    assert eight["8"]["basis"].startswith("measured")
    report.main(["--work", str(work), "--out", str(tmp_path / "1.json"), "--gpus", "1", "--images", "20000",
                 "--batch", "256"])
    one = json.loads((tmp_path / "1.json").read_text())
    assert list(one["runs"]["bf16"]) == ["1"] and one["estimate"]["bf16"]["efficiency"] is None
    assert one["estimate"]["bf16"]["8"]["images_per_s"] == pytest.approx(8000.0)  # linear scaling assumed
    assert "linear scaling" in one["estimate"]["bf16"]["8"]["basis"]
