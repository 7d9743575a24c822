"""Self-supervised restoration pretraining (issue 14): corruptions, label fraction, split exclusion, encoder
freezing, and a tiny pretrain run whose best.pth a few-label fine-tune starts from."""

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from toolkit import FreezeEncoder, RestorationObjective, TrainConfig, build_segmentation_model, encoder_parameters
from toolkit import init_from, save_weights
from toolkit.data import Corrupt, DataError, exclude_split, label_fraction, save_split, split_records, unit_input_scale
from toolkit.data.corruptions import inpaint, local_pixel_shuffle, nonlinear_intensity, outpaint
from toolkit.data.mri import MRISlice, discover_folders
from toolkit.optim import build_optimizer, build_scheduler

from .mri_fake import make_lgg
from .utils import ROOT, run_env

CORRUPTIONS = (nonlinear_intensity, local_pixel_shuffle, inpaint, outpaint)


def images(n=6, c=2, size=32, seed=0):
    return torch.rand((n, c, size, size), generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fn", CORRUPTIONS, ids=lambda f: f.__name__)
def test_each_corruption_keeps_shape_dtype_and_range_and_repeats_with_a_seed(fn):
    x = images()
    every, none = torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)
    out = fn(x, every, generator=gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, x)
    assert torch.equal(out, fn(x, every, generator=gen(1)))
    assert not torch.equal(out, fn(x, every, generator=gen(2)))
    assert torch.equal(fn(x, none, generator=gen(1)), x)  # images not selected are left alone
    some = torch.tensor([True, False] * 3)
    part = fn(x, some, generator=gen(1))
    assert torch.equal(part[~some], x[~some]) and not torch.equal(part[some], x[some])


def test_pixel_shuffle_only_moves_values_within_tiles():
    x = images(2, 1, 30)
    out = local_pixel_shuffle(x, torch.ones(2, dtype=torch.bool), block=0.2, tile_p=1.0, generator=gen())
    s = 6  # tiles of 0.2 * 30 pixels
    tiles = lambda t: t.reshape(2, 1, 5, s, 5, s).permute(0, 1, 2, 4, 3, 5).reshape(2, 1, 25, s * s)  # noqa: E731
    assert torch.equal(tiles(out).sort(-1).values, tiles(x).sort(-1).values)
    assert not torch.equal(out, x)


def test_intensity_curve_is_monotone_per_image():
    ramp = torch.linspace(0, 1, 50).view(1, 1, 1, 50).repeat(8, 1, 1, 1)
    out = nonlinear_intensity(ramp, torch.ones(8, dtype=torch.bool), gen(3))[:, 0, 0]
    steps = out[:, 1:] - out[:, :-1]
    assert bool(((steps >= -1e-6).all(1) | (steps <= 1e-6).all(1)).all())  # rising or falling, never both


def test_corrupt_chain_is_reproducible_and_respects_probabilities():
    x = images()
    a, b = Corrupt(seed=5), Corrupt(seed=5)
    first = a(x)
    assert torch.equal(first, b(x)) and first.shape == x.shape and 0 <= float(first.min()) <= float(first.max()) <= 1
    assert not torch.equal(a(x), first)  # the sequence moves on
    a.reset()
    assert torch.equal(a(x), first)
    off = Corrupt(nonlinear_p=0, shuffle_p=0, inpaint_p=0, outpaint_p=0)
    assert torch.equal(off(x), x)
    for bad in ({"inpaint_p": 0.5, "outpaint_p": 0.6}, {"shuffle_p": 1.5}, {"inpaint_sizes": (0.5, 0.2)},
                {"shuffle_block": 0}):
        with pytest.raises(ValueError):
            Corrupt(**bad)
    with pytest.raises(ValueError, match="float"):
        Corrupt()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_restoration_objective_compares_the_sigmoid_output_with_the_clean_image():
    model = build_segmentation_model("unet", 1, 1, (8, 16, 32))
    objective = RestorationObjective(Corrupt(seed=0), model_scale=unit_input_scale("per_slice"))
    x = (images(4, 1) * 255).to(torch.uint8)
    out = objective(model, x)
    assert torch.equal(out.targets, x.float() / 255)
    assert out.preds.shape == out.targets.shape and 0 <= float(out.preds.min()) and float(out.preds.max()) <= 1
    assert not torch.equal(out.inputs, out.targets)
    assert torch.isclose(out.loss, ((out.preds - out.targets) ** 2).mean())
    model.eval()  # validation: the same corrupted images every time
    first = objective(model, x).inputs
    model.train()
    objective(model, x)
    model.eval()
    assert torch.equal(objective(model, x).inputs, first)


def patient_records(patients=10, slices=3):
    return [MRISlice(f"p{p}_{k}", f"P{p}", "folder", Path(f"p{p}_{k}.png"), Path(f"p{p}_{k}_mask.png"))
            for p in range(patients) for k in range(slices)]


def test_label_fraction_keeps_whole_training_patients_by_seed():
    split = split_records(patient_records(), 0.2, 0.2, seed=3)
    train = split["train"]
    patients = {r.patient for r in train}
    kept = label_fraction(train, 0.5, seed=3)
    assert kept == label_fraction(list(train), 0.5, seed=3)  # identical across calls (and arms)
    assert [r for r in train if r in kept] == kept  # a sub-list, in order
    chosen = {r.patient for r in kept}
    assert len(chosen) == math.ceil(0.5 * len(patients))
    assert all(sum(r.patient == p for r in kept) == 3 for p in chosen)  # whole patients only
    assert label_fraction(train, 1.0, seed=3) == train
    assert len({r.patient for r in label_fraction(train, 0.01, seed=3)}) == 1
    assert {r.patient for r in label_fraction(train, 0.5, seed=3)} <= patients
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            label_fraction(train, bad)


def test_exclude_split_drops_every_slice_of_val_and_test_patients(tmp_path):
    records = patient_records()
    split = split_records(records, 0.2, 0.2, seed=1)
    path = save_split(tmp_path / "split.json", {"train": split["train"][:0], "val": split["val"][:1],
                                                "test": split["test"]})
    kept, dropped = exclude_split(records, path)
    gone = {split["val"][0].patient} | {r.patient for r in split["test"]}
    assert {r.patient for r in kept} == {r.patient for r in records} - gone and dropped == 3 * len(gone)
    other = save_split(tmp_path / "other.json", {"val": [MRISlice("nope", None, "folder", Path("a"), Path("b"))]})
    with pytest.raises(ValueError, match="none of the 1"):
        exclude_split(records, other)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text('["p1_0"]')
    for name, message in (("broken.json", "not readable as JSON"), ("list.json", "holds none of the splits")):
        with pytest.raises(DataError, match=f"{name} .*{message}"):  # the file named, no traceback of json
            exclude_split(records, tmp_path / name)


def test_init_from_refuses_weights_of_another_architecture(tmp_path):
    small = build_segmentation_model("unet", 1, 1, (8, 16, 32))
    path = save_weights(tmp_path / "best.pth", small.state_dict())
    init_from(build_segmentation_model("unet", 1, 1, (8, 16, 32)), path)  # the same model loads
    for other in (build_segmentation_model("unet", 1, 1, (8, 16, 32, 64)),
                  build_segmentation_model("autoencoder", 1, 1, (8, 16, 32)),
                  build_segmentation_model("unet", 1, 3, (8, 16, 32)),
                  build_segmentation_model("unet_s2d", 1, 1, (8, 16, 32))):  # same keys, 4x the stem channels
        with pytest.raises(ValueError, match=r"best\.pth: these weights are of another model"):
            init_from(other, path)


def test_freeze_encoder_keeps_encoder_weights_until_released():
    model = build_segmentation_model("unet", 1, 1, (8, 16, 32))
    freeze = FreezeEncoder(model, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = {k: v.clone() for k, v in model.named_parameters()}
    objective = RestorationObjective(Corrupt(seed=0))
    x = (images(4, 1) * 255).to(torch.uint8)
    for _ in range(2):
        objective(model, x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    frozen = {id(p) for p in freeze.params}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (id(p) in frozen), name
    freeze.release()
    objective(model, x).loss.backward()
    optimizer.step()
    assert not torch.equal(model.encoder[0][0].weight, before["encoder.0.0.weight"])


def test_freeze_encoder_follows_the_epoch_a_resumed_run_starts_at():
    class Stub:  # what the callback reads of the Trainer
        class accelerator:
            print = staticmethod(print)

    for done, frozen in ((0, True), (1, True), (2, False), (5, False)):
        freeze = FreezeEncoder(build_segmentation_model("unet", 1, 1, (8, 16, 32)), 2)
        freeze.on_fit_start(Stub, types.SimpleNamespace(epoch=done))
        assert freeze.frozen == frozen, done  # a run resumed after epoch 2 trains its encoder, as it did before
        freeze.on_epoch_end(Stub, types.SimpleNamespace(epoch=max(done, 1) + 1), {}, None)
        assert freeze.frozen == (max(done, 1) + 1 < 2), done


def test_encoder_lr_scale_gives_the_encoder_its_own_learning_rate_through_the_schedule():
    model = build_segmentation_model("unet_s2d", 1, 1, (8, 16, 32))
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    plain = build_optimizer(model, cfg)
    assert [(g["lr"], g["weight_decay"]) for g in plain.param_groups] == [(1e-2, 0.1), (1e-2, 0.0)]  # as before
    encoder = {id(p) for p in encoder_parameters(model)}
    optimizer = build_optimizer(model, cfg, [(encoder_parameters(model), 0.1)])
    groups = [(g["lr"], g["weight_decay"], {id(p) in encoder for p in g["params"]}) for g in optimizer.param_groups]
    assert groups == [(1e-2, 0.1, {False}), (1e-2, 0.0, {False}), (pytest.approx(1e-3), 0.1, {True}),
                      (pytest.approx(1e-3), 0.0, {True})]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    scheduler, schedule = build_scheduler(optimizer, cfg, total_steps=20)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = (images(4, 1) * 255).to(torch.uint8)
    for step in range(1, 6):  # warm-up and decay scale both groups alike: the encoder's LR stays 0.1 x the rest
        RestorationObjective(Corrupt(seed=0))(model, x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs[0] == pytest.approx(1e-2 * schedule(step)) and lrs[2] == pytest.approx(0.1 * lrs[0])
    moved = {id(p): (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    enc = max(v for i, v in moved.items() if i in encoder)
    rest = max(v for i, v in moved.items() if i not in encoder)
    assert 0 < enc < 0.3 * rest  # AdamW steps are about lr in size: the encoder moves about a tenth as far
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="factors must be finite and > 0"):
            build_optimizer(model, cfg, [(encoder_parameters(model), bad)])


def run_recipe(name, args, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / name), *args], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_pretrain_then_fine_tune_with_few_labels(tmp_path):
    data = make_lgg(tmp_path / "lgg", patients=8, slices=4)
    common = ["--data-dir", str(data), "--image-size", "32", "--widths", "8,16,32", "--num-workers", "0",
              "--batch-size", "4", "--epochs", "1", "--output-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"]
    slices = discover_folders(data, channels=1).slices
    planned = split_records(slices, 0.25, 0.25, seed=0)  # what the fine-tune run will draw
    split_file = save_split(tmp_path / "planned.json", planned)
    run_recipe("brain_mri_pretrain.py", [*common, "--run-name", "pre", "--exclude-split", str(split_file)])
    pre = tmp_path / "runs" / "pre"
    used = json.loads((pre / "split.json").read_text())
    held = {r.id for name in ("val", "test") for r in planned[name]}
    assert not held & set(used["train"] + used["val"]) and used["excluded_slices"] == len(held)
    assert json.loads((pre / "summary.json").read_text())["epochs_completed"] == 1

    ft_args = [*common, "--run-name", "ft", "--init-from", str(pre / "best.pth"), "--val-fraction", "0.25",
               "--test-fraction", "0.25", "--label-fraction", "0.5", "--freeze-encoder-epochs", "1",
               "--postprocess", "false"]
    proc = run_recipe("brain_mri.py", ft_args)
    assert f"init_from: started from the weights of {pre / 'best.pth'}" in proc.stdout
    assert "init_from: note" not in proc.stdout  # the same FLAIR slices, scaled the same way
    ft = json.loads((tmp_path / "runs" / "ft" / "split.json").read_text())
    assert ft["val"] == [r.id for r in planned["val"]] and ft["test"] == [r.id for r in planned["test"]]
    train_patients = {r.patient for r in planned["train"]}
    kept = {i.split("_")[2] for i in ft["train"]}  # TCGA_XX_<patient>_...
    assert len(kept) == math.ceil(0.5 * len(train_patients)) and len(ft["train"]) == 4 * len(kept)
    before = torch.load(pre / "best.pth", weights_only=True)
    after = torch.load(tmp_path / "runs" / "ft" / "best.pth", weights_only=True)
    model = build_segmentation_model("unet", 1, 1, (8, 16, 32))
    encoder = {n for n, _ in model.named_parameters() if n.startswith(("encoder.", "bottleneck."))}
    assert encoder and all(torch.equal(before[n], after[n]) for n in encoder)  # frozen for its only epoch
    assert not torch.equal(before["head.weight"], after["head.weight"])
    again = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri.py"), *ft_args, "--resume",
                            "--encoder-lr-scale", "0.5"],
                           cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "changed: encoder_lr_scale 1.0 -> 0.5" in again.stderr, again.stderr[-2000:]


def _run_folder(path, source, channels, in_channels, intensity=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"channels": channels, "in_channels": in_channels}))
    (path / "split.json").write_text(json.dumps({"source": source, "train": [], "val": []}))
    if intensity:
        (path / "target.json").write_text(json.dumps({"kind": "binary", "intensity": intensity}))
    return path


def test_init_from_notes_weights_of_other_channels_or_intensity(tmp_path):
    from toolkit import input_difference

    flair = _run_folder(tmp_path / "flair", "lgg", "", 1)
    assert input_difference(flair / "best.pth", _run_folder(tmp_path / "same", "lgg", "flair", 1)) == ""
    note = input_difference(flair / "best.pth", _run_folder(tmp_path / "post", "lgg", "post", 1))
    assert note == ("the weights' run read flair of lgg data, scaled per slice; this run reads post of lgg data, "
                    "scaled per slice")
    brats = _run_folder(tmp_path / "brats", "brats+brats", "flair", 1, intensity="zscore")
    assert "flair of brats data, z-scored per volume" in input_difference(brats / "best.pth", flair)
    assert input_difference(tmp_path / "elsewhere" / "best.pth", flair) == ""  # weights outside a run folder


@pytest.mark.parametrize("recipe, args, message", [
    ("brain_mri.py", ["--label-fraction", "1.5"], "label_fraction"),
    ("brain_mri_pretrain.py", ["--inpaint-p", "0.5", "--outpaint-p", "0.6"], "inpaint_p + outpaint_p"),
    ("brain_mri_pretrain.py", ["--model", "unet3d"], "model must be one of"),
])
def test_recipes_refuse_bad_settings_before_training(recipe, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), *args], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_resumed_restoration_run_corrupts_and_trains_as_the_uninterrupted_one(tmp_path):
    """The training corruptions come from the RNG the resumable state saves, not from a generator that a
    resume restarts at the seed (which repeated the first epochs' corruptions after a resume)."""
    from dataclasses import replace

    from accelerate.state import AcceleratorState

    from toolkit import ReconstructionMetrics, Trainer

    from .utils import Interrupt, TinyImages, crash_in_epoch, tiny_cfg

    class Images(TinyImages):
        def __getitem__(self, i):
            return super().__getitem__(i)[0]

    def fit(cfg, callbacks=()):
        try:
            return Trainer(cfg, recipe="tiny").fit(
                torch.nn.Conv2d(1, 1, 3, padding=1), RestorationObjective(Corrupt(seed=0)), Images(48),
                Images(20, seed=1), metrics=[ReconstructionMetrics()], monitor="mse", mode="min", param_budget=None,
                callbacks=callbacks)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)

    whole = fit(tiny_cfg(tmp_path, run_name="a", epochs=3))
    cut = tiny_cfg(tmp_path, run_name="b", epochs=3)
    with pytest.raises(Interrupt):
        fit(cut, callbacks=[crash_in_epoch(2)])
    resumed = fit(replace(cut, resume=True))
    assert [(h["train_loss"], h["mse"]) for h in resumed] == [(h["train_loss"], h["mse"]) for h in whole]


def test_pretraining_lists_the_files_skip_bad_files_left_out(tmp_path, capsys):
    """As recipes/brain_mri.py does; the pretraining used to drop them without a word."""
    from accelerate.state import AcceleratorState

    from .mri_fake import make_folder
    from .utils import load_recipe

    data = make_folder(tmp_path / "d", n=8)
    (data / "images" / "3.png").write_bytes(b"not an image")
    try:
        load_recipe("brain_mri_pretrain").main([
            "--data-dir", str(data), "--skip-bad-files", "--image-size", "32", "--widths", "4,8", "--epochs", "1",
            "--num-workers", "0", "--batch-size", "4", "--val-fraction", "0.25", "--output-dir", str(tmp_path / "runs"),
            "--wandb-mode", "disabled"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert f"skipped 1 bad file(s): {data / 'images' / '3.png'}" in capsys.readouterr().out
