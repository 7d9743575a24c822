"""tools/gpu_check.sh --dry-run (commands and JSON skeleton, no GPU), its report on a faked work folder, and
tools/gpu_peak.py around a real (tiny, CPU) recipe run."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from tests.utils import ROOT, run_env
from toolkit.checkpoint import save_json

SCRIPT = ROOT / "tools" / "gpu_check.sh"


def dry_run(tmp_path, *extra, **env):
    out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "g.json"),
                          *extra], cwd=ROOT, env=run_env(PATH="/usr/bin:/bin", **env), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, json.loads((tmp_path / "g.json").read_text())


def test_dry_run_commands_and_skeleton(tmp_path):
    stdout, result = dry_run(tmp_path, "--gpus", "4")
    assert result["dry_run"] is True and result["gpu_count"] == 4 and result["gpu_count_assumed"] is False
    printed = [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]
    assert printed == result["commands"]
    launches = [shlex.split(c) for c in result["commands"] if "accelerate.commands.launch" in c]
    assert len(launches) == 4  # 2 recipes x (1 GPU, 4 GPUs)
    for cmd in launches:
        procs = int(cmd[cmd.index("--num_processes") + 1])
        assert cmd[cmd.index("--config_file") + 1] == "accelerate_config.yaml" and procs in (1, 4)
        assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and "tools/gpu_peak.py" in cmd
        assert int(cmd[cmd.index("--batch-size") + 1]) * procs == 64  # same global batch
    assert any("bench.run" in c and "trainer_overhead" in c for c in result["commands"])
    assert set(result["runs"]) == {"brain_mri", "mnist_autoencoder"}
    assert all(fig["images_per_s"] is None and fig["peak_memory_bytes"] is None
               for recipe in result["runs"].values() for fig in recipe.values())
    assert result["loss_match"]["brain_mri"]["same"] is None and result["trainer_overhead"] is None
    assert not (tmp_path / "w" / "runs").exists()  # nothing ran


def launch_batches(result) -> dict[tuple[str, int], int]:
    """(recipe, processes) -> --batch-size of each launch in the JSON's commands."""
    batches = {}
    for cmd in (shlex.split(c) for c in result["commands"] if "accelerate.commands.launch" in c):
        recipe = next(a for a in cmd if a.startswith("recipes/")).split("/")[1].removesuffix(".py")
        batches[recipe, int(cmd[cmd.index("--num_processes") + 1])] = int(cmd[cmd.index("--batch-size") + 1])
    return batches


def test_cifar10_runs_at_its_own_batch_and_per_gpu_batch_overrides_all(tmp_path):
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    _, result = dry_run(tmp_path, "--gpus", "4", CIFAR10_DIR=str(cifar))
    assert result["skipped"] == [] and set(result["runs"]) == {"brain_mri", "mnist_autoencoder", "cifar10"}
    assert launch_batches(result) == {("brain_mri", 1): 64, ("brain_mri", 4): 16, ("mnist_autoencoder", 1): 64,
                                      ("mnist_autoencoder", 4): 16, ("cifar10", 1): 512, ("cifar10", 4): 128}
    _, result = dry_run(tmp_path, "--gpus", "2", CIFAR10_DIR=str(cifar), PER_GPU_BATCH="8")
    assert set(launch_batches(result).values()) == {8, 16}
    assert {b for (_, n), b in launch_batches(result).items() if n == 2} == {8}
    out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=run_env(PER_GPU_BATCH="0"))
    assert out.returncode == 2 and "PER_GPU_BATCH" in out.stderr and "'0'" in out.stderr


def test_dry_run_without_gpus_assumes_two_and_one_gpu_has_no_scaling(tmp_path):
    _, result = dry_run(tmp_path)  # no nvidia-smi on PATH here
    assert result["gpu_count"] == 2 and result["gpu_count_assumed"] is True
    _, single = dry_run(tmp_path, "--gpus", "1")
    assert single["scaling"] == {} and single["loss_match"] == {} and list(single["runs"]["brain_mri"]) == ["1"]


def test_bad_arguments_are_refused(tmp_path):
    for args, message in ((["--gpus", "x"], "--gpus"), (["--bogus"], "unknown argument")):
        out = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr


def test_report_reads_runs(tmp_path):
    work = tmp_path / "w"
    for n, rate, loss, peak in ((1, 100.0, 0.50, 2**30), (2, 180.0, 0.55, 2**29)):
        run = work / "runs" / f"brain_mri-{n}gpu"
        save_json(run / "summary.json", {"train_images_per_s": rate, "wall_time_s": 10.0})
        save_json(run / "history.json", [{"train_loss": 9.0}, {"train_loss": loss, "val_loss": loss + 0.1}])
        for rank in range(n):
            save_json(work / "peak" / run.name / f"rank{rank}.json", {"max_memory_allocated_bytes": peak + rank})
    save_json(work / "bench.json", {"sections": {"trainer_overhead": {"rows": [{"name": "training steps",
                                                                               "ratio": 0.97}]}}})
    out = subprocess.run([sys.executable, "tools/gpu_check_report.py", "--work", str(work), "--out",
                          str(tmp_path / "g.json"), "--gpus", "2", "--recipes", "brain_mri", "--tolerance", "0.05"],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["runs"]["brain_mri"]["2"]["peak_memory_bytes"] == 2**29 + 1
    assert result["runs"]["brain_mri"]["1"]["final_train_loss"] == 0.50
    assert abs(result["scaling"]["brain_mri"]["images_per_s_ratio"] - 1.8) < 1e-9
    assert abs(result["scaling"]["brain_mri"]["per_gpu_efficiency"] - 0.9) < 1e-9
    match = result["loss_match"]["brain_mri"]
    assert abs(match["relative_difference"] - 0.1) < 1e-9 and match["same"] is False  # 10 % > 5 %
    assert result["trainer_overhead"] == [{"name": "training steps", "ratio": 0.97}]


def test_gpu_peak_wraps_a_recipe(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from kill_harness import fake_mnist

    fake_mnist(tmp_path / "mnist", 64, 32)
    cmd = [sys.executable, "tools/gpu_peak.py", "recipes/mnist_autoencoder.py", "--data-dir", str(tmp_path / "mnist"),
           "--download", "false", "--cnn-channels", "8,8,8", "--epochs", "1", "--batch-size", "32",
           "--num-workers", "0", "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "runs"),
           "--run-name", "peak"]
    out = subprocess.run(cmd, cwd=ROOT, env=run_env(GPU_PEAK_DIR=str(tmp_path / "peak"), CUDA_VISIBLE_DEVICES=""),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "runs" / "peak" / "summary.json").is_file()
    peak = json.loads((tmp_path / "peak" / "rank0.json").read_text())
    assert peak == {"rank": 0, "device": "cpu", "max_memory_allocated_bytes": 0, "max_memory_reserved_bytes": 0}
