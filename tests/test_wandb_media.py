"""W&B offline runs read back: one run per launch, grouped by recipe, summary, mask overlays, grids, worst slices."""

import json
import statistics
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch.nn as nn
from PIL import Image

from toolkit import DenoisingObjective, ReconstructionMetrics, TrainConfig, Trainer
from toolkit.report import write_report
from toolkit.wandb_media import ReconstructionMedia

from .utils import ACCELERATE, ROOT, TinyImages, free_port, logged, read_records, run_env


def _one_offline_run(tmp_path, run_dir):
    found = sorted(p for p in tmp_path.rglob("offline-run-*") if p.is_dir())
    assert len(found) == 1 and found[0].parent == run_dir / "wandb", found  # one run per launch, in the run folder
    (run_file,) = found[0].glob("run-*.wandb")
    return found[0], run_file


def test_two_process_segmentation_launch_logs_one_grouped_run(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    args = ["--synthetic-images", "20", "--image-size", "48", "--batch-size", "8", "--num-workers", "0",
            "--log-every", "1",
            "--wandb-mode", "offline", "--output-dir", str(runs), "--synthetic-dir", str(data), "--run-name", "seg",
            "--epochs", "2", "--model", "autoencoder", "--eval-every", "1"]  # a validation and its media each epoch
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(ROOT / "recipes" / "brain_mri.py")]
    env = run_env(ACCELERATE_USE_CPU="true", WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-env"),
                  WANDB_DATA_DIR=str(tmp_path / "wandb-data"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
                  WANDB_SILENT="true", WANDB_INIT_TIMEOUT="300")  # a loaded CI machine starts W&B slowly
    proc = subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = runs / "seg"
    summary_json = json.loads((run_dir / "summary.json").read_text())
    history_json = json.loads((run_dir / "history.json").read_text())
    val_ids = json.loads((run_dir / "split.json").read_text())["val"]
    assert summary_json["num_processes"] == 2

    _, run_file = _one_offline_run(tmp_path, run_dir)
    (run_record,) = [r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run_record.run_group == "brain_mri" and run_record.display_name == "seg"
    config = {}  # the run's config, then its updates in order: --in-channels 0 becomes what the data gave (1, grey)
    updates = [r.config for r in read_records(run_file) if r.WhichOneof("record_type") == "config"]
    for c in [run_record.config, *updates]:
        config.update({i.key: json.loads(i.value_json) for i in c.update})
    assert config["in_channels"] == 1 == json.loads((run_dir / "config.json").read_text())["in_channels"]
    rows, summary = logged(run_file)
    best = f"best_{summary_json['monitor']}"  # dice, or dice_global when the validation slices are mostly empty
    for key in ("best_value", "best_epoch", best, "trainable_params", "total_params", "train_images_per_s",
                "final/dice", "final/val_loss"):
        assert key in summary, key
    assert summary[best] == summary_json["best_value"] and summary["best_epoch"] == summary_json["best_epoch"]
    assert summary["trainable_params"] == summary_json["trainable_params"]

    epochs = [r for r in rows if "epoch" in r]
    # 16 training slices in batches of 8 on 2 processes: one optimizer step an epoch, so the step's loss (the mean
    # of both processes' batches, as one process would log it) is the epoch's loss
    steps = {r["_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert len(epochs) == 2 and all(steps[r["_step"]] == pytest.approx(r["train/epoch_loss"], rel=1e-6) for r in epochs)
    assert [r["val/dice"] for r in epochs] == pytest.approx([h["dice"] for h in history_json])
    masked = [r for r in rows if r.get("val/segmentation/_type") == "images/separated"]
    assert len(masked) == 2  # one set of mask overlays per epoch
    overlays = masked[-1]["val/segmentation/all_masks"]
    assert overlays and all(set(m) == {"prediction", "ground_truth"} for m in overlays)

    (table_row,) = [r for r in rows if r.get("val/worst_slices/_type") == "table-file"]
    assert table_row["val/worst_slices/nrows"] == len(val_ids)  # fewer val slices than the 12 the table holds
    manifest = [e for r in read_records(run_file) if r.WhichOneof("record_type") == "artifact"
                for e in r.artifact.manifest.contents]
    (table_entry,) = [e for e in manifest if e.path.endswith("worst_slices.table.json")]
    table = json.loads(open(table_entry.local_path).read())
    assert table["columns"] == ["id", "dice", "true_pixels", "pred_pixels", "image"]
    ids, dice = [row[0] for row in table["data"]], [row[1] for row in table["data"]]
    assert sorted(ids) == sorted(val_ids)  # every validation slice once, gathered from both processes
    assert dice == sorted(dice)  # worst first
    assert statistics.fmean(dice) == pytest.approx(history_json[-1]["dice"], abs=1e-9)  # the final epoch's Dice
    for row in table["data"]:
        assert row[4]["_type"] == "image-file" and set(row[4]["masks"]) == {"prediction", "ground_truth"}

    write_report(runs)  # the report reads the same real run folder
    page = (run_dir / "report.html").read_text()
    assert f"{summary_json['best_value']:.4g}" in page and page.count("data:image/png;base64,") >= 1


def test_denoising_run_logs_a_reconstruction_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "300")  # a loaded CI machine starts the W&B service slowly
    cfg = TrainConfig(output_dir=str(tmp_path / "runs"), run_name="ae", epochs=1, batch_size=8, num_workers=0,
                      wandb_mode="offline", warmup_fraction=0.0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())
    trainer = Trainer(replace(cfg), recipe="tiny_ae")
    trainer.fit(model, DenoisingObjective(0.3), TinyImages(32), TinyImages(16, seed=1), metrics=[ReconstructionMetrics()],
                monitor="mse", mode="min", param_budget=500_000, callbacks=[ReconstructionMedia()])
    run_root, run_file = _one_offline_run(tmp_path, trainer.run_dir)
    rows, summary = logged(run_file)
    (grid,) = [r for r in rows if r.get("val/reconstructions/_type") == "image-file"]
    image = np.asarray(Image.open(run_root / "files" / grid["val/reconstructions/path"]))
    # 3 rows (noisy input, output, clean target) of 8 tiles of 8x8 pixels with 2-pixel padding
    assert image.shape[:2] == (3 * 10 + 2, 8 * 10 + 2)
    rows_px = [image[2 + 10 * i:10 + 10 * i, 2:10, 0].astype(int) for i in range(3)]
    assert not np.array_equal(rows_px[0], rows_px[2])  # the input row is the noisy one, not the target
    assert summary["best_mse"] == pytest.approx(json.loads((trainer.run_dir / "summary.json").read_text())["best_value"])
    assert "final/psnr" in summary
