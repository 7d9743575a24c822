"""Reliability of the Trainer: mid-epoch states, keep-last-K, SIGTERM/SIGUSR1/Ctrl-C, NaN stops, untrusted files,
kills."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer
from toolkit.checkpoint import UnsafeFileError, load_weights, save_json
from toolkit.state_folders import find_state, list_states

from .utils import ROOT, TinyImages, TinyNet, run_env

BATCHES = 6  # TinyImages(48) / batch 8: optimizer steps per epoch


class Crash(Exception):
    pass


class Recording(TinyImages):
    """TinyImages that records every index it serves (num_workers=0: in this process)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.served = []

    def __getitem__(self, i):
        self.served.append(int(i))
        return super().__getitem__(i)


class Faulty(TinyNet):
    """TinyNet whose ``at``-th training forward pass calls ``action`` (raise, send a signal, return NaN)."""

    def __init__(self, at: int, action):
        super().__init__()
        self.at, self.action, self.calls = at, action, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                out = self.action(self, out)
        return out


def cfg_for(tmp_path, name, **kw):
    base = TrainConfig(output_dir=str(tmp_path / "runs"), run_name=name, epochs=2, batch_size=8, lr=0.05,
                       num_workers=0, wandb_mode="disabled", warmup_fraction=0.0, checkpoint_every=2)
    return replace(base, **kw)


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def fit(cfg, model=TinyNet, train=None):
    """Train; ``model`` is a factory called after the Trainer seeded the RNGs (same initial weights)."""
    trainer = Trainer(cfg, recipe="tiny")
    train = train or Recording(48)
    trainer.fit(model(), ClassificationObjective(), train, TinyImages(16, seed=1),
                metrics=[Accuracy()], monitor="accuracy", param_budget=500_000)
    return trainer, train


def final_weights(run_dir):
    return load_file(find_state(run_dir) / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("augment", [False, True])
def test_mid_epoch_resume_skips_exactly_the_batches_done(tmp_path, augment):
    # augment: the batches left after the resume get the augmentation they would have had (EpochSeeded)
    ref, ref_data = fit(cfg_for(tmp_path, "ref"), train=Recording(48, augment=augment))
    reset_accelerate()

    def crash(model, out):
        raise Crash()

    with pytest.raises(Crash):  # 5th step of epoch 1: the state of step 4 is the newest
        fit(cfg_for(tmp_path, "b"), model=lambda: Faulty(5, crash), train=Recording(48, augment=augment))
    reset_accelerate()
    state = json.loads((find_state(tmp_path / "runs/b") / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 4, 4)

    resumed, data = fit(cfg_for(tmp_path, "b", resume=True), train=Recording(48, augment=augment))
    assert data.served == ref_data.served[4 * 8:]  # the rest of epoch 1, then all of epoch 2: none twice, none lost
    assert_same_weights(final_weights(ref.run_dir), final_weights(resumed.run_dir))
    history = json.loads((resumed.run_dir / "history.json").read_text())
    ref_history = json.loads((ref.run_dir / "history.json").read_text())
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in ref_history], rel=1e-6)


def test_atomic_files_get_the_umask_permissions_or_keep_the_replaced_ones(tmp_path):
    old = os.umask(0o027)
    try:
        new = save_json(tmp_path / "new.json", {"a": 1})  # not the temporary file's 0o600
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o644)
        save_json(kept, {"a": 2})
    finally:
        os.umask(old)
    assert new.stat().st_mode & 0o777 == 0o640 and json.loads(new.read_text()) == {"a": 1}
    assert kept.stat().st_mode & 0o777 == 0o644 and json.loads(kept.read_text()) == {"a": 2}
    assert not list(tmp_path.glob(".*.tmp"))


def test_keeps_the_newest_states_and_points_latest_at_the_last(tmp_path):
    old = os.umask(0o022)
    try:
        trainer, _ = fit(cfg_for(tmp_path, "k", checkpoint_every=1, keep_states=3))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in trainer.run_dir.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes  # safetensors writes the state's model 0o600 itself
    names = [p.name for p in list_states(trainer.run_dir)]
    assert names == [f"step-{s:08d}" for s in (10, 11, 12)]
    assert (trainer.run_dir / "state/latest").read_text().strip() == "step-00000012"
    assert not list((trainer.run_dir / "state").glob(".*"))  # no temporary folders left
    best = load_weights(trainer.run_dir / "best.safetensors")
    assert_same_weights(best, torch.load(trainer.run_dir / "best.pth", weights_only=True))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGUSR1, 0)])
def test_signal_saves_a_state_then_exits_and_resume_matches(tmp_path, signum, code, capsys):
    # the handlers the process had before (a background job's shell may have set SIGINT to SIG_IGN)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    ref, _ = fit(cfg_for(tmp_path, "ref", checkpoint_every=0))
    reset_accelerate()

    def send(model, out):
        if model.calls == model.at:
            os.kill(os.getpid(), signum)
        return out

    with pytest.raises(SystemExit) as stopped:
        fit(cfg_for(tmp_path, "s", checkpoint_every=0), model=lambda: Faulty(3, send))
    assert stopped.value.code == code
    assert f"received signal {int(signum)}" in capsys.readouterr().out
    assert {s: signal.getsignal(s) for s in before} == before  # the Trainer put the previous handlers back
    reset_accelerate()
    state = json.loads((find_state(tmp_path / "runs/s") / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)  # saved at the step boundary after the signal
    resumed, _ = fit(cfg_for(tmp_path, "s", checkpoint_every=0, resume=True))
    assert_same_weights(final_weights(ref.run_dir), final_weights(resumed.run_dir))


def test_nan_loss_names_the_step_and_keeps_the_last_good_state(tmp_path):
    def poison(model, out):
        return out * float("nan")

    with pytest.raises(FloatingPointError) as err:
        fit(cfg_for(tmp_path, "n", checkpoint_every=1, log_every=100), model=lambda: Faulty(4, poison))
    run = tmp_path / "runs/n"
    last = find_state(run)
    assert last.name == "step-00000003"  # the NaN step (4) was never saved
    assert f"at optimizer step 4 (epoch 1); the last good state is {last}" in str(err.value)
    assert "loss became nan" in str(err.value)
    assert all(torch.isfinite(t).all() for t in load_file(last / "model.safetensors").values())
    assert [p.name for p in list_states(run)] == ["step-00000002", "step-00000003"]


class Evil:
    """A pickle whose loading would run code: it writes the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_the_evil_pickle_really_runs_code_without_weights_only(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"x": Evil(marker)}, path)
    torch.load(path, weights_only=False)  # the control: proves the file carries code
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("victim", ["scheduler.pt", "optimizer.bin", "random_states_0.pkl"])
def test_resume_refuses_a_state_file_that_carries_code(tmp_path, victim):
    trainer, _ = fit(cfg_for(tmp_path, "e", epochs=1, checkpoint_every=0))
    reset_accelerate()
    state, marker = find_state(trainer.run_dir), tmp_path / "ran"
    torch.save({"state": Evil(marker)}, state / victim)  # same container format as the real files
    with pytest.raises(UnsafeFileError, match=rf"refusing to load .*{victim}: it names the Python object exec.*nothing in it was run"):
        fit(cfg_for(tmp_path, "e", epochs=2, checkpoint_every=0, resume=True))
    assert not marker.exists()


def test_weights_that_carry_code_are_refused_by_load_and_cli(tmp_path):
    marker, weights = tmp_path / "ran", tmp_path / "run" / "best.pth"
    weights.parent.mkdir()
    torch.save({"conv.weight": Evil(marker)}, weights)
    (weights.parent / "config.json").write_text(json.dumps({"model": "unet", "image_size": 32}))
    with pytest.raises(UnsafeFileError, match="best.pth"):
        load_weights(weights)
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", "predict", "--weights", str(weights), "--input",
                           str(tmp_path), "--output", str(tmp_path / "out")], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "refusing to load" in proc.stderr and "best.pth" in proc.stderr
    assert not marker.exists()


def test_kill_harness_trials_all_resume_to_identical_weights(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "kill_harness.py"), "--trials", "3", "--seed", "1",
                           "--epochs", "1", "--workdir", str(tmp_path / "kh")], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "kh" / "report.json").read_text())
    assert report["trials_run"] == report["trials_survived"] == 3
    assert all(r["weights_equal"] and r["history_epochs_ok"] for r in report["runs"])


@pytest.mark.parametrize("batch, accum", [(16, 1), (4, 2)])
def test_mid_epoch_resume_at_another_batch_size_skips_the_images_done(tmp_path, batch, accum):
    """A state of 4 batches of 8 resumed at batch 16 (3 steps per epoch), or at batch 4 with --grad-accum-steps 2
    (still 6 steps per epoch of 48 images): the 16 images left are trained, not 4 new batches skipped."""
    ref, ref_data = fit(cfg_for(tmp_path, "ref", epochs=1, checkpoint_every=0), train=Recording(48))
    reset_accelerate()

    def crash(model, out):
        raise Crash()

    with pytest.raises(Crash):  # 5th step of epoch 1: the state of step 4 (4 batches of 8) is the newest
        fit(cfg_for(tmp_path, "b", epochs=1), model=lambda: Faulty(5, crash))
    reset_accelerate()
    resumed, data = fit(cfg_for(tmp_path, "b", epochs=1, batch_size=batch, grad_accum_steps=accum, resume=True),
                        train=Recording(48))
    assert data.served == ref_data.served[32:]  # the 16 images left, not 4 skipped batches of the new size
    assert resumed.loop.scheduler.last_epoch == resumed.loop.schedule.total_steps  # the schedule ends with it
    loss = json.loads((resumed.run_dir / "history.json").read_text())[0]["train_loss"]
    ref_loss = json.loads((ref.run_dir / "history.json").read_text())[0]["train_loss"]
    assert loss == pytest.approx(ref_loss, rel=0.2)  # a mean per batch, not the 4 old batches' sum over fewer
