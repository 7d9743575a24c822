"""TrainState: the JSON of trainer_state.json round-trips, and states of the older formats still load and resume."""

import json
from dataclasses import replace

import pytest

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer
from toolkit.state_folders import STATE_MARKER, find_state
from toolkit.state import TrainState

from .utils import TinyImages, TinyNet

KEYS = {"epoch", "global_step", "history", "best", "best_epoch", "train_time_s", "wall_time_s", "planned_epochs",
        "batch_in_epoch", "partial", "skipped_steps", "epoch_end_walls",  # the keys the files have always used
        "patience_best", "epochs_without_improvement", "stop_reason",  # early stopping (older files lack them)
        "steps_per_epoch"}  # the pace of the fit that saved it (older files lack it)
OLDEST = {"epoch": 2, "global_step": 12, "history": [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.6}],
          "best": 0.8, "best_epoch": 2, "train_time_s": 1.5, "wall_time_s": 2.0, "planned_epochs": 4}


def cfg_for(tmp_path, **kw):
    base = TrainConfig(output_dir=str(tmp_path / "runs"), run_name="s", epochs=1, batch_size=8, lr=0.05,
                       num_workers=0, wandb_mode="disabled", warmup_fraction=0.0, checkpoint_every=0)
    return replace(base, **kw)


def fit(cfg):
    trainer = Trainer(cfg, recipe="tiny")
    history = trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(48), TinyImages(16, seed=1),
                          metrics=[Accuracy()], monitor="accuracy", param_budget=500_000)
    return trainer, history


def test_round_trip_keeps_every_field_and_key():
    state = TrainState(planned_epochs=5, epoch=3, global_step=17, batch_in_epoch=2,
                       partial={"loss_sum": 1.25, "seen": 16, "time_s": 0.5}, best=0.9, best_epoch=2,
                       history=[{"epoch": 1, "accuracy": 0.5}], train_time_s=3.0, wall_time_s=4.5,
                       epoch_end_walls=[1.5, 3.0, 4.5], skipped_steps=1, patience_best=0.9,
                       epochs_without_improvement=1, stop_reason="no improvement", steps_per_epoch=6)
    data = json.loads(json.dumps(state.to_json()))
    assert set(data) == KEYS
    assert TrainState.from_json(data) == state
    data["history"][0]["accuracy"] = 0.0  # to_json is a copy: the state does not change with it
    assert state.history[0]["accuracy"] == 0.5


def test_oldest_format_loads_with_defaults_and_unknown_keys_are_ignored():
    state = TrainState.from_json({**OLDEST, "some_future_key": 1})
    assert (state.epoch, state.global_step, state.best, state.best_epoch, state.planned_epochs) == (2, 12, 0.8, 2, 4)
    assert state.history == OLDEST["history"]
    assert (state.batch_in_epoch, state.partial, state.skipped_steps, state.epoch_end_walls) == (0, None, 0, [])
    assert (state.patience_best, state.epochs_without_improvement, state.stop_reason) == (None, 0, None)


def test_a_state_without_its_required_keys_is_refused_by_name():
    with pytest.raises(ValueError, match=r"lacks \['global_step', 'planned_epochs'\]"):
        TrainState.from_json({"epoch": 1, "history": []})
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        TrainState.from_json([])


def test_saved_state_on_disk_has_the_same_keys_and_loads(tmp_path):
    trainer, history = fit(cfg_for(tmp_path))
    data = json.loads((find_state(trainer.run_dir) / STATE_MARKER).read_text())
    assert set(data) == KEYS
    state = TrainState.from_json(data)
    assert state.history == history and state.epoch == 1 and state.to_json() == data


def test_resume_from_a_state_of_the_oldest_format_refits_the_schedule(tmp_path):
    fit(cfg_for(tmp_path, epochs=1))
    marker = find_state(tmp_path / "runs/s") / STATE_MARKER
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: data[k] for k in OLDEST}))  # as the first version wrote it
    trainer, history = fit(cfg_for(tmp_path, epochs=3, resume=True))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    loop = trainer.loop
    assert loop.schedule.total_steps == 3 * loop.steps_per_epoch  # --epochs 3: refitted through the reference
    assert loop.scheduler.lr_lambdas[0] is loop.schedule  # the reference is the scheduler's own multiplier


@pytest.mark.parametrize("batch", [16, 4])
def test_resume_at_another_batch_size_ends_the_schedule_with_the_last_epoch(tmp_path, batch):
    """Steps per epoch 6 -> 3 (or 12) after epoch 2 of 4: the cosine reaches 0 at the last step, not before or
    after it (a requeued job on another number of GPUs changes the pace the same way)."""
    from accelerate.state import AcceleratorState

    fit(cfg_for(tmp_path, epochs=2, scheduler="cosine"))  # 48 images, batch 8: 6 steps per epoch
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, history = fit(cfg_for(tmp_path, epochs=4, scheduler="cosine", batch_size=batch, resume=True))
    steps = 12 + 2 * (48 // batch)
    assert trainer.loop.scheduler.last_epoch == steps and trainer.loop.schedule.total_steps == steps
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and history[-2]["lr"] > 0


def test_resume_refuses_an_unreadable_trainer_state_by_name(tmp_path):
    from toolkit.config import ConfigError

    fit(cfg_for(tmp_path, epochs=1))
    marker = find_state(tmp_path / "runs/s") / STATE_MARKER
    marker.write_text('{"epoch": 1}')  # edited by hand: no step, history or plan
    with pytest.raises(ConfigError, match=rf"{marker} is not a readable trainer state \(trainer state lacks"):
        fit(cfg_for(tmp_path, epochs=2, resume=True))


def test_a_kill_while_the_same_step_is_saved_again_resumes_from_its_old_copy(tmp_path):
    """save_training_state moves a state saved again for the same step to .old-<name> before the new one takes
    its place; a kill between the two renames leaves the latest step only there (with --keep-states 1 nothing
    else): find_state must still find it, and the next save clears it."""
    root = tmp_path / "state"
    old = root / ".old-step-00000005"
    old.mkdir(parents=True)
    (old / STATE_MARKER).write_text("{}")
    (root / "latest").write_text("step-00000005\n")
    assert find_state(tmp_path) == old
    (root / "step-00000005").mkdir()
    (root / "step-00000005" / STATE_MARKER).write_text("{}")
    assert find_state(tmp_path) == root / "step-00000005"  # the renamed-in copy wins once it is there
