"""The model artifact of a run (W&B offline) and a folder of its files used as a run folder by the CLI."""

import json
import shutil
import subprocess

import cv2
import numpy as np

from toolkit.artifacts import artifact_files, artifact_name
from toolkit.cli import main
from toolkit.export import read_metadata

from .utils import ACCELERATE, ROOT, read_records, run_env

RUN_FILES = {"best.pth", "config.json", "split.json", "postprocess.json", "target.json"}


def _artifacts(run_file):
    return [r.artifact for r in read_records(run_file) if r.WhichOneof("record_type") == "artifact"]


def test_run_logs_one_model_artifact_offline_and_its_folder_predicts(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--synthetic-images", "16", "--image-size", "32", "--widths", "8,16,32", "--batch-size", "4",
            "--num-workers", "0", "--epochs", "1", "--wandb-mode", "offline", "--output-dir", str(runs),
            "--synthetic-dir", str(tmp_path / "data"), "--run-name", "seg", "--target", "binary"]
    cmd = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(ROOT / "recipes" / "brain_mri.py"), *args]
    env = run_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-env"), WANDB_SILENT="true",
                  WANDB_DATA_DIR=str(tmp_path / "wandb-data"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
                  WANDB_INIT_TIMEOUT="300")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = runs / "seg"
    assert {p.name for p in artifact_files(run)} == RUN_FILES  # best.pth, not also best.safetensors

    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    models = [a for a in _artifacts(run_file) if a.type == "model"]
    assert len(models) == 1, [a.name for a in models]  # one per run
    art = models[0]
    assert art.name == "seg-model" and set(art.aliases) == {"best", "latest"}
    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads(art.metadata)
    assert meta["recipe"] == "brain_mri" and meta["best_epoch"] == summary["best_epoch"] == 1
    assert meta["best_value"] == summary["best_value"]
    entries = {e.path: e for e in art.manifest.contents}
    assert set(entries) == RUN_FILES
    staged = tmp_path / "wandb-data" / "artifacts" / "staging"
    folder = tmp_path / "artifact"  # the artifact's files as a download would lay them out
    folder.mkdir()
    for name, entry in entries.items():
        assert entry.local_path.startswith(str(staged)), entry.local_path  # copied, offline, for `wandb sync`
        assert open(entry.local_path, "rb").read() == (run / name).read_bytes(), name
        assert entry.size == (run / name).stat().st_size
        shutil.copy(entry.local_path, folder / name)

    # the artifact folder is a run folder for `toolkit predict`: same masks as from the run itself
    image = np.random.default_rng(0).integers(0, 256, size=(40, 36), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scan.png"), image)
    for source, out in ((run, "from_run"), (folder, "from_artifact")):
        assert main(["predict", "--weights", str(source / "best.pth"), "--input", str(tmp_path / "scan.png"),
                     "--output", str(tmp_path / out)]) == 0
    a, b = (cv2.imread(str(tmp_path / o / "scan_mask.png"), cv2.IMREAD_UNCHANGED) for o in ("from_run", "from_artifact"))
    assert a.shape == (40, 36) and np.array_equal(a, b)
    assert main(["predict", "--weights", str(folder), "--input", str(tmp_path / "scan.png"),
                 "--output", str(tmp_path / "from_folder")]) == 0  # the folder itself, as a run folder

    # and `toolkit export` of the artifact's files carries the threshold chosen at fit end (postprocess.json)
    assert main(["export", "--weights", str(folder / "best.pth"), "--format", "onnx"]) == 0
    meta = read_metadata(folder / "best.onnx")
    chosen = json.loads((run / "postprocess.json").read_text())["choice"]["threshold"]
    assert meta["threshold"] == chosen and meta["image_size"] == 32 and meta["recipe"] == "brain_mri"
    assert "max abs difference" in capsys.readouterr().out


def test_artifact_name_and_files(tmp_path):
    assert artifact_name(tmp_path / "brain mri:1") == "brain-mri-1-model"
    assert artifact_name(tmp_path / "cv5" / "fold2") == "cv5-fold2-model"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert artifact_files(run) == []  # no weights: nothing to log
    (run / "best.safetensors").write_bytes(b"x")
    (run / "history.json").write_text("[]")
    assert [p.name for p in artifact_files(run)] == ["best.safetensors", "config.json"]


def test_each_cross_validation_fold_is_its_own_wandb_run(tmp_path):
    """Every CV has a fold0 (and every SSL curve a pretrain): its W&B run (id, name, resumed with
    resume="allow") must name the CV too, or the fold0 of a second CV would continue the first CV's fold0 run."""
    from types import SimpleNamespace

    from toolkit import TrainConfig
    from toolkit.ssl_curve import run_name
    from toolkit.tracking import start_tracking

    seen = []
    acc = SimpleNamespace(num_processes=1, mixed_precision="no",
                          init_trackers=lambda project, config, init_kwargs: seen.append(init_kwargs["wandb"]))
    cfg = TrainConfig(wandb_mode="offline")
    point = run_name(0.1, 0, "pretrained")  # every SSL curve has these runs too, and its pretrain
    for run_dir in (tmp_path / "cvA" / "fold0", tmp_path / "cvB" / "fold0", tmp_path / "brain mri.v2",
                    tmp_path / "ssl-a" / point, tmp_path / "ssl-b" / point, tmp_path / "ssl-b" / "pretrain"):
        start_tracking(acc, cfg, "brain_mri", run_dir)
    assert [(s["id"], s["name"]) for s in seen] == [
        ("cvA-fold0", "cvA-fold0"), ("cvB-fold0", "cvB-fold0"), ("brain-mri-v2", "brain-mri.v2"),
        ("ssl-a-f0-1-s0-pretrained", "ssl-a-f0.1-s0-pretrained"),
        ("ssl-b-f0-1-s0-pretrained", "ssl-b-f0.1-s0-pretrained"), ("ssl-b-pretrain", "ssl-b-pretrain")]
    assert artifact_name(tmp_path / "cvA" / "fold0") == "cvA-fold0-model"
