"""Bad configuration is refused with a clear message before any training starts."""

import shutil
import subprocess
import sys

import pytest
import torch

from toolkit import TrainConfig, Trainer
from toolkit.config import ConfigError, parse_config

from .utils import ROOT, load_recipe, run_env


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"lr": -0.1}, "lr must be > 0, got -0.1"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"keep_states": 0}, "keep_states must be >= 1"),
    ({"checkpoint_every": -5}, "checkpoint_every must be >= 0"),
    ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\)"),
    ({"batch_size": "8"}, "batch_size must be of type int, got str '8'"),
    ({"epochs": 2.5}, "epochs must be of type int, got float 2.5"),
    ({"resume": 1}, "resume must be of type bool, got int 1"),
    ({"patience": -1}, "patience must be >= 0, got -1"),
    ({"min_delta": -0.01}, "min_delta must be >= 0, got -0.01"),
    ({"lr": "fast"}, "lr must be of type float, got str 'fast'"),
    ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd; got 'adam'"),
    ({"run_name": "../escape"}, "run_name must be a plain folder name"),
    ({"run_name": ".."}, r"run_name must be a plain folder name \(no ./., not \. or \.\.\), got .\.\.."),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*31\), got -1"),
    ({"seed": 2**32}, r"seed must be in \[0, 2\*\*31\)"),
    ({"momentum": -1.0}, r"momentum must be in \[0, 1\) \(SGD; 0 = none\), got -1.0"),  # were torch's traceback
    ({"momentum": 1.5}, r"momentum must be in \[0, 1\)"),  # (negative) or a diverging SGD (>= 1)
])
def test_values_are_checked_when_the_config_is_built(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kw)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "eight"], "--batch_size expects int, got 'eight'"),
    (["--lr", "-1e-3"], "lr must be > 0, got -0.001"),
    (["--checkpoint-every", "1.5"], "--checkpoint_every expects int, got '1.5'"),
    (["--epochz", "3"], "unknown config key --epochz"),
])
def test_command_line_values_are_checked(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(TrainConfig, argv, exit_on_error=False)


def test_an_output_folder_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = TrainConfig(output_dir=str(tmp_path / "file"), run_name="r", wandb_mode="disabled")
    with pytest.raises(ConfigError, match=f"output_dir {tmp_path / 'file'} exists and is not a folder"):
        Trainer(cfg, recipe="tiny")


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path):
    cfg = TrainConfig(output_dir="/proc/toolkit-runs", run_name="r", wandb_mode="disabled")  # even root cannot
    with pytest.raises(ConfigError, match="output_dir: cannot create or write the run folder /proc/toolkit-runs/r"):
        Trainer(cfg, recipe="tiny")


def test_zero_epochs_are_refused_when_fit_would_train_nothing(tmp_path):
    from .utils import TinyImages, TinyNet
    from toolkit import Accuracy, ClassificationObjective

    trainer = Trainer(TrainConfig(output_dir=str(tmp_path), run_name="z", epochs=0, num_workers=0,
                                  wandb_mode="disabled"), recipe="tiny")
    with pytest.raises(ConfigError, match="epochs must be >= 1 to train, got 0"):
        trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(8), TinyImages(4), metrics=[Accuracy()],
                    monitor="accuracy", param_budget=None)


def test_an_error_before_training_leaves_the_run_folder_as_it_found_it(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"x.weight": torch.zeros(3)}, bad)
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--synthetic-images", "8", "--synthetic-dir",
           str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs"), "--run-name", "a", "--epochs", "1",
           "--image-size", "32", "--widths", "8,16,32", "--num-workers", "0", "--postprocess", "false"]
    env = {**run_env(), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}

    def run(*extra):
        return subprocess.run([*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    proc = run("--wandb-mode", "offline", "--init-from", str(bad))  # refused after the data were read
    assert proc.returncode == 2 and proc.stderr.count("error: ") == 1, proc.stderr[-2000:]
    assert not (tmp_path / "runs" / "a").exists()  # no split.json, target.json, wandb/ or figures/ left
    assert run().returncode == 0  # a finished run; without its state, --resume auto would start it anew
    folder = tmp_path / "runs" / "a"
    shutil.rmtree(folder / "state")
    def files():  # W&B's own logs under wandb/ aside (they note every start)
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()
                and p.relative_to(folder).parts[0] != "wandb"}
    before = files()
    proc = run("--resume", "auto", "--lr", "0.5", "--init-from", str(bad))
    assert proc.returncode == 2 and "config.json" in {str(p) for p in before}
    assert files() == before  # its config.json, best.pth, split.json ... as they were


def test_mnist_without_its_files_ends_in_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_autoencoder.py"), "--data-dir",
                           str(tmp_path / "none"), "--download", "false", "--output-dir", str(tmp_path / "runs"),
                           "--wandb-mode", "disabled"], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "MNIST not found" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run left for reports


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--data-dir", "/nonexistent/mri"], "data_dir '/nonexistent/mri' is not a folder"),
    (["--augment", "5"], "augment must be in [0, 4] (0 = none, 1 = the default), got 5.0"),
    (["--output-dir", "/proc/toolkit-runs"], "cannot create or write the run folder"),
])
def test_the_recipe_refuses_bad_config_before_training(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--synthetic-images", "4",
                           "--synthetic-dir", str(tmp_path / "data"), "--wandb-mode", "disabled", *args],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "epoch 1" not in proc.stdout  # nothing trained


@pytest.mark.parametrize("recipe, argv, message", [
    # each was accepted, then failed mid-run with a traceback (threshold, bce_weight), a message naming another
    # field (synthetic_images: "data_dir: num_images must be >= 1") or was silently ignored (fold, slice_rule)
    ("brain_mri", ["--threshold", "1.5"], r"threshold must be in \(0, 1\) \(a tumour probability\), got 1.5"),
    ("brain_mri", ["--threshold", "0"], r"threshold must be in \(0, 1\)"),
    ("brain_mri", ["--bce-weight", "-1"], "bce_weight must be >= 0, got -1.0"),
    ("brain_mri", ["--split-block", "0"], "split_block must be >= 1"),
    ("brain_mri", ["--fold", "2"], "fold 2 given without folds"),
    ("brain_mri", ["--synthetic-images", "0"], "synthetic_images must be >= 1"),
    ("brain_mri", ["--synthetic-dir", ""], "synthetic_dir is empty"),  # wrote images/, masks/ into the working dir
    ("brain_mri", ["--slice-rule", "tumor+x"], r"slice_rule must be one of all, nonempty, tumour, tumour\+N"),
    ("brain_mri", ["--deep-supervision", "true", "--crop-size", "40"],
     r"deep_supervision: the training side 40 px \(crop_size\) must be a multiple of 16 for model unet_s2d"),
    ("brain_mri", ["--deep-supervision", "true", "--crop-size", "0", "--image-size", "200", "--model", "unet"],
     r"training side 200 px \(image_size\) must be a multiple of 16 for model unet with widths the default"),
    ("brain_mri", ["--deep-supervision", "true", "--model", "smp_unet"], "not to smp_unet"),
    ("brain_mri_pretrain", ["--synthetic-images", "-3"], "synthetic_images must be >= 1"),
    ("brain_mri_pretrain", ["--slice-rule", "some"], "slice_rule must be one of"),
    ("brain_mri_pretrain", ["--widths", "8,x"], "widths must be comma-separated positive ints"),
    ("brain_mri_pretrain", ["--data-dir", "/nonexistent/mri"], "data_dir '/nonexistent/mri' is not a folder"),
])
def test_brain_mri_settings_are_checked_when_parsed(recipe, argv, message, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    module = load_recipe(recipe)
    cls = module.BrainMRIConfig if recipe == "brain_mri" else module.BrainMRIPretrainConfig
    with pytest.raises(ConfigError, match=message):
        parse_config(cls, argv, exit_on_error=False)


@pytest.mark.parametrize("recipe", ["brain_mri", "brain_mri_pretrain"])
def test_a_synthetic_dir_under_a_file_is_refused_when_parsed(recipe, tmp_path, monkeypatch):
    """It ended in a NotADirectoryError traceback (exit status 1) when the slices were written."""
    (tmp_path / "file").write_text("x")
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    module = load_recipe(recipe)
    cls = module.BrainMRIConfig if recipe == "brain_mri" else module.BrainMRIPretrainConfig
    for where in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ConfigError, match=f"synthetic_dir '{where}': cannot write the synthetic slices there "
                                              f"\\({tmp_path / 'file'} is not a folder\\)"):
            parse_config(cls, ["--synthetic-dir", str(where)], exit_on_error=False)
    assert parse_config(cls, ["--synthetic-dir", str(tmp_path / "new" / "x")]).synthetic_dir  # not made yet: fine


@pytest.mark.parametrize("recipe, cls, argv, message", [
    ("cifar10", "CIFAR10Config", ["--width", "100000"],
     r"model resnet with these widths has 10,540,016,500,010 trainable parameters, over param_budget 500,000"),
    ("cifar10", "CIFAR10Config", ["--model", "fast", "--widths", "64,128,512"], r"over param_budget 500,000"),
    ("brain_mri", "BrainMRIConfig", ["--model", "unet", "--widths", "4096,8192,16384,32768,65536"],
     r"model unet with these widths and 1 channel in and out has [\d,]+ trainable parameters, over param_budget 500,000"),
    ("mnist_autoencoder", "MNISTConfig", ["--cnn-channels", "100000,32,15"],
     r"model cnn with cnn_channels \(100000, 32, 15\) has 59,624,080 trainable parameters, over the cnn model's "
     r"budget of 35,000 \(param_budget 0\); give smaller --cnn-channels"),
    ("mnist_autoencoder", "MNISTConfig", ["--cnn-channels", "32,64,15"], r"85,648 .* over the cnn model's budget of 35,000"),
    ("mnist_autoencoder", "MNISTConfig", ["--cnn-channels", "32,64,15", "--param-budget", "80000"],
     r"85,648 trainable parameters, over param_budget 80,000"),
    ("mnist_autoencoder", "MNISTConfig", ["--model", "linear", "--param-budget", "1000"],
     r"model linear has 223,391 trainable parameters, over param_budget 1,000"),
    ("stl10_supervised", "STL10SupervisedConfig", ["--width", "100000"],
     r"STL10CNN of width 100000 has 4,500,012,100,010 trainable parameters, over param_budget 500,000"),
    ("stl10_supervised", "STL10SupervisedConfig", ["--width", "34"], r"524,324 trainable parameters, over param_budget 500,000"),
    ("stl10_pretrain", "STL10PretrainConfig", ["--channels", "24,48,64,100000"],
     r"STL10AutoEncoder with channels \(24, 48, 64, 100000\) has 115,477,875 trainable parameters, over "
     r"param_budget 220,000"),
    ("stl10_pretrain", "STL10PretrainConfig", ["--dataset", "cifar10", "--channels", "32,64,128,256"],
     r"over param_budget 220,000"),
    ("stl10_probe", "STL10ProbeConfig", ["--encoder", "random", "--channels", "24,48,64,100000"],
     r"the probe's head on an encoder of channels \(24, 48, 64, 100000\) \(96x96 images\) has 36,000,010 "
     r"trainable parameters, over param_budget 500,000"),
    ("stl10_probe", "STL10ProbeConfig", ["--encoder", "random", "--param-budget", "30000"],
     r"has 34,570 trainable parameters, over param_budget 30,000"),
    ("brain_mri_pretrain", "BrainMRIPretrainConfig", ["--model", "unet", "--widths", "4096,8192,16384,32768,65536"],
     r"model unet with these widths and 1 input channel\(s\) has [\d,]+ trainable parameters, over param_budget "
     r"500,000; give smaller --widths"),
    ("brain_mri_pretrain", "BrainMRIPretrainConfig", ["--model", "autoencoder", "--widths", "1000,2000",
                                                      "--in-channels", "4"],
     r"model autoencoder with these widths and 4 input channel\(s\) has 89,054,001 trainable parameters"),
])
def test_a_model_over_its_budget_is_refused_before_it_is_built(recipe, cls, argv, message, monkeypatch):
    """Counted on the meta device when the config is parsed: a width of 100,000 used to be built for real first
    (hundreds of GB) and fail in the allocator, or the machine, before the Trainer's budget check."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))  # stl10_probe imports stl10_pretrain
    config = getattr(load_recipe(recipe), cls)
    with pytest.raises(ConfigError, match=message):
        parse_config(config, argv, exit_on_error=False)
    assert parse_config(config, [], exit_on_error=False).param_budget == config.param_budget  # the defaults fit


@pytest.mark.parametrize("recipe, cls, argv", [
    ("mnist_autoencoder", "MNISTConfig", ["--model", "linear"]),  # 223,391 within the linear model's 500,000
    ("mnist_autoencoder", "MNISTConfig", ["--cnn-channels", "32,64,15", "--param-budget", "85648"]),
    ("stl10_pretrain", "STL10PretrainConfig", ["--dataset", "cifar10"]),
    ("stl10_probe", "STL10ProbeConfig", ["--encoder", "random", "--channels", "100000,48,64,96"]),  # frozen: exempt
    ("stl10_probe", "STL10ProbeConfig", ["--channels", "24,48,64,100000"]),  # latest: its run's channels, not these
    ("stl10_probe", "STL10ProbeConfig", ["--encoder", "random", "--param-budget", "34570"]),
    ("brain_mri_pretrain", "BrainMRIPretrainConfig", ["--in-channels", "4"]),
])
def test_a_model_within_the_budget_the_trainer_applies_is_not_refused_early(recipe, cls, argv, monkeypatch):
    """The early check counts what the Trainer counts: the model's budget when param_budget is 0 (mnist), only
    the trainable head of the probe (the frozen encoder is exempt); an encoder's channels only once known."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    parse_config(getattr(load_recipe(recipe), cls), argv, exit_on_error=False)
