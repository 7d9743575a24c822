"""The brain-MRI recipe end to end, launched as users launch it, on a handful of generated slices."""

import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from toolkit import (ConfigError, build_segmentation_model, choose_monitor, find_image_mask_pairs, settle_epochs,
                     split_ids)
from toolkit.targets import resolve_target

from .mri_fake import make_lgg
from .utils import ACCELERATE, ROOT, free_port, run_env

TINY = ["--synthetic-images", "12", "--image-size", "64", "--batch-size", "4", "--num-workers", "1",
        "--wandb-mode", "disabled"]


def launch(args, *, processes=1, timeout=300, ok=True):
    if processes == 1:
        cmd = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
               "--dynamo_backend", "no"]
        env = run_env()
    else:
        cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        env = run_env(ACCELERATE_USE_CPU="true")
    proc = subprocess.run([*cmd, str(ROOT / "recipes" / "brain_mri.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_recipe_trains_then_resumes(tmp_path):
    common = [*TINY, "--output-dir", str(tmp_path / "runs"), "--synthetic-dir", str(tmp_path / "data"),
              "--run-name", "mri"]
    launch([*common, "--epochs", "2"])
    run = tmp_path / "runs" / "mri"
    assert len(list((tmp_path / "data" / "images").glob("*.png"))) == 12
    for name in ("config.json", "history.json", "summary.json", "best.pth", "state/latest",
                 "figures/history.png", "figures/overlays_epoch002.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and summary["epochs_completed"] == 2
    assert summary["trainable_params"] <= 500_000
    model = build_segmentation_model("unet_s2d")  # the default model
    model.load_state_dict(torch.load(run / "best.pth", weights_only=True))

    proc = launch([*common, "--epochs", "3", "--resume"])
    assert "after epoch 2" in proc.stdout
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (run / "figures/overlays_epoch003.png").is_file()
    assert {"dice", "iou", "dice_global", "iou_global", "val_loss", "train_loss"} <= set(history[-1])

    split, config = ((run / f).read_text() for f in ("split.json", "config.json"))  # another split on resume:
    proc = launch([*common, "--epochs", "4", "--resume", "--val-fraction", "0.5"], ok=False)
    assert "holds another split" in proc.stderr and "val_fraction 0.2 -> 0.5" in proc.stderr
    assert proc.stderr.count("error: --resume:") == 1  # said once as a settings error, not the recipe's traceback
    assert 'brain_mri.py", line' not in proc.stderr and "exit status 2" in proc.stderr  # (accelerate adds its own)
    assert (run / "split.json").read_text() == split and (run / "config.json").read_text() == config  # refused
    assert len(json.loads((run / "history.json").read_text())) == 3
    proc = launch([*common, "--epochs", "4", "--resume", "--widths", "8,16,32,64"], ok=False)  # another model
    assert "saved state does not load into the model" in proc.stderr and "widths '' -> '8,16,32,64'" in proc.stderr
    assert common[:2] == ["--synthetic-images", "12"]  # replaced, not repeated (a key given twice is refused)
    proc = launch(["--synthetic-images", "20", *common[2:], "--epochs", "4", "--resume"], ok=False)  # other data
    assert "synthetic_images 12 -> 20" in proc.stderr and "split.json" not in proc.stderr.split("error:")[1]
    assert len(list((tmp_path / "data" / "images").glob("*.png"))) == 12  # refused before writing them anew
    assert (run / "config.json").read_text() == config and len(json.loads((run / "history.json").read_text())) == 3


def test_recipe_with_two_processes(tmp_path):
    launch([*TINY, "--output-dir", str(tmp_path / "runs"), "--synthetic-dir", str(tmp_path / "data"),
            "--run-name", "ddp", "--epochs", "1", "--model", "autoencoder", "--ema-decay", "0.9"], processes=2)
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_processes"] == 2
    # the weight average under DDP: plain keys in best.pth (no "module." prefix), saved once in the state
    ema = torch.load(run / "state" / (run / "state" / "latest").read_text().strip() / "ema.pt", weights_only=True)
    best = torch.load(run / "best.pth", weights_only=True)
    build_segmentation_model("autoencoder").load_state_dict(best)
    assert ema["updates"] > 0 and all(torch.equal(best[k], ema["weights"][k]) for k in best)
    pairs = find_image_mask_pairs(tmp_path / "data")
    _, val_ids = split_ids([p[0] for p in pairs], 0.2, seed=0)
    assert summary["final"]["num_images"] == summary["final"]["val_samples"] == len(val_ids)  # each counted once


def test_mostly_empty_validation_picks_best_and_post_processing_by_pooled_dice(tmp_path):
    # LGG-like data, two thirds of the slices without tumour: per-image Dice would reward predicting nothing
    data = make_lgg(tmp_path / "lgg", patients=5)
    proc = launch(["--data-dir", str(data), "--image-size", "32", "--batch-size", "4", "--num-workers", "0",
                   "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "runs"), "--run-name", "lgg",
                   "--epochs", "1", "--crop-size", "0", "--val-fraction", "0.4"])
    assert "monitor: dice_global (pixels pooled), since" in proc.stdout
    run = tmp_path / "runs" / "lgg"
    # --in-channels left at 0: every LGG channel (pre, FLAIR, post), recorded for evaluate / predict
    assert "in_channels: 3, what the lgg data give" in proc.stdout
    assert json.loads((run / "config.json").read_text())["in_channels"] == 3
    best = torch.load(run / "best.pth", weights_only=True)
    build_segmentation_model("unet_s2d", in_channels=3).load_state_dict(best)
    assert json.loads((run / "summary.json").read_text())["monitor"] == "dice_global"
    steps = json.loads((run / "postprocess.json").read_text())["steps"]
    assert {s["figure"] for s in steps} == {"dice_global"} and "pooled Dice" in proc.stdout


def test_choose_monitor_rules():
    binary = resolve_target("", labels=None, regions=None, regions_text="", class_names=None)
    val = SimpleNamespace(masks=np.zeros((4, 8, 8), np.uint8))
    val.masks[:3, 2, 2] = 1  # 1 of 4 slices empty: the 25% share
    said = []
    assert choose_monitor("", binary, val, said.append) == "dice_global" and "1 of 4" in said[0]
    val.masks[3, 2, 2] = 1  # every slice holds tumour (figshare): per-image Dice
    assert choose_monitor("", binary, val, said.append) == "dice" and len(said) == 1
    assert choose_monitor("dice_tumour", binary, val) == "dice_tumour"  # asked for: kept
    with pytest.raises(ConfigError, match="monitor must be one of dice, iou, dice_global.*'dicee'"):
        choose_monitor("dicee", binary, val)
    classes = resolve_target("classes", labels=None, regions=None, regions_text="",
                             class_names=["glioma", "meningioma"])
    assert choose_monitor("", classes, val, said.append) == "dice_global"


def test_default_epochs_show_the_same_number_of_training_slices():
    saved, said = [], []
    trainer = SimpleNamespace(save_config=lambda: saved.append(True), accelerator=SimpleNamespace(print=said.append))
    for train_size, epochs in ((1545, 100), (305, 508), (400_000, 1)):  # figshare (where 100 was chosen), LGG, huge
        cfg = SimpleNamespace(epochs=0)
        settle_epochs(cfg, trainer, train_size)
        assert cfg.epochs == epochs and f"/ {train_size}" in said[-1]
    assert len(saved) == 3  # config.json records the number
    cfg = SimpleNamespace(epochs=7)  # given: kept, nothing written
    settle_epochs(cfg, trainer, 305)
    assert cfg.epochs == 7 and len(saved) == 3


def test_recipe_refuses_bad_config_before_training(tmp_path):
    proc = subprocess.run([sys_python(),
                           str(ROOT / "recipes" / "brain_mri.py"), "--epochz", "3"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key --epochz" in proc.stderr and "synthetic_images" in proc.stderr
    proc = subprocess.run([sys_python(), str(ROOT / "recipes" / "brain_mri.py"), "--model", "resnet"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model must be one of autoencoder, unet, unet_s2d, smp_unet; got 'resnet'" in proc.stderr


def sys_python():
    import sys
    return sys.executable


@pytest.mark.parametrize("flag", ["--help"])
def test_recipe_help_lists_fields(flag):
    proc = subprocess.run([sys_python(), str(ROOT / "recipes" / "brain_mri.py"), flag], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "--synthetic_images" in proc.stdout and "slices" in proc.stdout and "--lr" in proc.stdout


def test_bad_data_found_while_reading_end_in_one_error_line(tmp_path):
    from .mri_fake import make_raw, raw_label, write_nifti

    def recipe(data, name):
        return subprocess.run([sys_python(), str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data),
                               "--run-name", name, "--output-dir", str(tmp_path / "runs"), "--epochs", "1",
                               "--image-size", "32", "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0",
                               "--wandb-mode", "disabled"], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                              timeout=300)

    raw = make_raw(tmp_path / "raw", cases=2, shape=(32, 32, 8))
    label, affine = raw / "labelsTr" / "case_002.nii.gz", np.diag([1.0, 1.2, 3.0, 1.0])
    bad = raw_label().astype(np.float32)
    bad[bad == 2] = 7  # a label value dataset.json does not declare
    write_nifti(label, bad, affine)
    lgg = make_lgg(tmp_path / "lgg", patients=2, slices=3)
    mask = next((lgg / "kaggle_3m").rglob("*_2_mask.tif"))
    mask.unlink()  # an LGG slice without its mask
    for data, name, what in ((raw, "raw", f"{label}: holds label values [7] not declared in dataset.json"),
                             (lgg, "lgg", f"no mask for image {mask.with_name(mask.name.replace('_mask', ''))}")):
        proc = recipe(data, name)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.count("error: data_dir: ") == 1 and what in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "runs" / name).exists()  # no config/split/target.json of a run that never trained
    write_nifti(label, raw_label().astype(np.float32), affine)  # fixed: the same command trains
    proc = recipe(raw, "raw")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "raw" / "summary.json").is_file()


def test_more_folds_than_patients_end_in_one_error_line_and_no_run(tmp_path):
    from .mri_fake import make_folder

    data = make_folder(tmp_path / "data", n=6)  # no metadata.csv: 6 units of one slice each
    proc = subprocess.run([sys_python(), str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data),
                           "--folds", "8", "--fold", "0", "--run-name", "f", "--output-dir", str(tmp_path / "runs"),
                           "--image-size", "32", "--num-workers", "0", "--wandb-mode", "disabled"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: split of {data}: cannot make 8 folds of 6 unit(s)" in proc.stderr
    assert not (tmp_path / "runs" / "f").exists()


@pytest.mark.parametrize("target", ["binary", "regions"])
def test_a_class_column_with_another_target_than_classes_is_refused(tmp_path, target, capsys):
    from toolkit import parse_config

    from .utils import load_recipe

    recipe = load_recipe("brain_mri")  # binary trained on the column's masks 0/1/2 (a BCE target of 2) before
    with pytest.raises(SystemExit) as exit_:
        parse_config(recipe.BrainMRIConfig, ["--target", target, "--class-column", "tumour_type",
                                             "--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"error: class_column 'tumour_type' given with target '{target}'" in capsys.readouterr().err
    cfg = parse_config(recipe.BrainMRIConfig, ["--class-column", "tumour_type", "--output-dir", str(tmp_path)])
    assert cfg.class_column == "tumour_type" and cfg.target == ""  # the target classes, as the column implies


def test_no_validation_trains_on_every_patient_and_keeps_the_last_weights(tmp_path, capsys):
    from safetensors.torch import load_file

    from toolkit.cli import main

    common = [*TINY, "--output-dir", str(tmp_path / "runs"), "--synthetic-dir", str(tmp_path / "data"),
              "--run-name", "all", "--val-fraction", "0", "--widths", "8,16,32", "--eval-every", "1"]
    proc = launch([*common, "--epochs", "1"])
    assert "no validation (val_fraction 0)" in proc.stdout and "train 12, val 0" in proc.stdout
    run = tmp_path / "runs" / "all"
    split = json.loads((run / "split.json").read_text())
    assert split["val"] == [] and len(split["train"]) == 12
    proc = launch([*common, "--epochs", "2", "--resume"])  # one more epoch: best.pth follows the last weights
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and not any({"val_loss", "dice"} & set(h) for h in history)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 2 and summary["best_value"] is None and summary["epochs_completed"] == 2
    best = torch.load(run / "best.pth", weights_only=True)
    last = load_file(run / "state" / (run / "state" / "latest").read_text().strip() / "model.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    assert not (run / "postprocess.json").exists() and (run / "figures" / "history.png").is_file()
    assert not list((run / "figures").glob("overlays_*"))  # drawn from validation slices: none
    assert main(["evaluate", "--weights", str(run), "--split", "val"]) == 2
    assert "'val' split is empty" in capsys.readouterr().err
    assert main(["evaluate", "--weights", str(run), "--split", "all", "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["summary"]["num_images"] == 12
    assert main(["postprocess", "--weights", str(run)]) == 2 and "'val' split is empty" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "runs")]) == 0  # a run without validation figures has its page too
    assert (tmp_path / "runs" / "all" / "report.html").is_file()
    proc = launch([*TINY, "--output-dir", str(tmp_path / "runs"), "--synthetic-dir", str(tmp_path / "data"),
                   "--run-name", "p", "--val-fraction", "0", "--patience", "3"], ok=False)
    assert "patience 3 counts validations" in proc.stderr and not (tmp_path / "runs" / "p").exists()


def test_deep_supervision_trains_chooses_post_processing_and_evaluates(tmp_path):
    """--deep-supervision end to end: the auxiliary heads train, best.pth keeps them, the post-processing search
    and evaluate rebuild the model from config.json (heads included) and score whole slices."""
    from toolkit.cli import main

    proc = launch([*TINY, "--output-dir", str(tmp_path / "runs"), "--synthetic-dir", str(tmp_path / "data"),
                   "--run-name", "ds", "--deep-supervision", "--crop-size", "32", "--widths", "8,16,32",
                   "--epochs", "2", "--eval-every", "1"])
    assert "trainable" in proc.stdout
    run = tmp_path / "runs" / "ds"
    assert json.loads((run / "config.json").read_text())["deep_supervision"] is True
    state = torch.load(run / "best.pth", weights_only=True)
    assert {k.split(".")[0] for k in state} >= {"aux_heads", "head"} and (run / "postprocess.json").is_file()
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "val",
                 "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["summary"]["num_images"] > 0
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output",
                 str(tmp_path / "ds.onnx")]) == 0  # eval mode: one output, the heads left out of the graph
