"""Fit hooks: called once per epoch and at the end, in list order; SaveCurve; the schedule reference."""

import json
from dataclasses import replace

import pytest

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer
from toolkit.callbacks import Callback, SaveCurve

from .utils import TinyImages, TinyNet


def make_cfg(tmp_path, **kw):
    base = TrainConfig(output_dir=str(tmp_path / "runs"), run_name="c", epochs=3, batch_size=8, lr=0.05,
                       num_workers=0, wandb_mode="disabled", warmup_fraction=0.0)
    return replace(base, **kw)


def fit(cfg, callbacks):
    trainer = Trainer(cfg, recipe="tiny")
    history = trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(48), TinyImages(20, seed=1),
                          metrics=[Accuracy()], monitor="accuracy", param_budget=500_000, callbacks=callbacks)
    return trainer, history


class Recorder(Callback):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_fit_start(self, trainer, state):
        self.calls.append((self.name, "start", state.epoch))

    def on_epoch_end(self, trainer, state, record, sample):
        assert state.epoch == record["epoch"] and state.history[-1] is record
        assert sample.preds.shape[0] <= 16 and sample.preds.device.type == "cpu"
        self.calls.append((self.name, "epoch", record["epoch"]))

    def on_fit_end(self, trainer, state):
        assert trainer.loop.model is not None
        self.calls.append((self.name, "end", state.epoch))


class OnlyEnd:  # no base class, one hook: the others are optional
    def __init__(self, calls):
        self.calls = calls

    def on_fit_end(self, trainer, state):
        self.calls.append(("plain", "end", len(state.history)))


def test_hooks_run_once_per_epoch_and_at_the_end_in_list_order(tmp_path):
    calls = []
    _, history = fit(make_cfg(tmp_path), [Recorder("a", calls), Recorder("b", calls), OnlyEnd(calls)])
    assert len(history) == 3
    assert calls == [("a", "start", 0), ("b", "start", 0), ("a", "epoch", 1), ("b", "epoch", 1), ("a", "epoch", 2), ("b", "epoch", 2),
                     ("a", "epoch", 3), ("b", "epoch", 3), ("a", "end", 3), ("b", "end", 3), ("plain", "end", 3)]


def test_fit_start_sees_the_restored_epoch(tmp_path, capsys):
    fit(make_cfg(tmp_path), [])
    config = (tmp_path / "runs" / "c" / "config.json").read_text()
    calls = []
    fit(make_cfg(tmp_path, resume="auto", lr=0.01), [Recorder("a", calls)])  # finished: nothing left to train
    assert calls == [("a", "start", 3)]  # its fit-end steps ran when it finished: not again with other settings
    out = capsys.readouterr().out
    assert "nothing left to train (epoch 3 of its plan of 3 done)" in out and "fit-end steps ran then" in out
    assert (tmp_path / "runs" / "c" / "config.json").read_text() == config  # the settings it trained with
    (tmp_path / "runs" / "c" / "summary.json").unlink()  # as if killed during its fit-end steps: they run now
    fit(make_cfg(tmp_path, resume="auto"), [Recorder("a", calls)])
    assert calls[1:] == [("a", "start", 3), ("a", "end", 3)] and (tmp_path / "runs" / "c" / "summary.json").is_file()
    assert "fit-end steps ran then" not in capsys.readouterr().out


def test_save_curve_writes_its_png(tmp_path):
    trainer, history = fit(make_cfg(tmp_path, epochs=2), [SaveCurve(["accuracy"], "accuracy")])
    png = trainer.figures_dir / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((trainer.run_dir / "history.json").read_text()) == history


@pytest.mark.parametrize("keys, name, match", [("accuracy", "acc", "non-empty list"), ([], "acc", "non-empty list"),
                                               (["accuracy"], "a/b", "plain file stem")])
def test_save_curve_refuses_bad_arguments(keys, name, match):
    with pytest.raises(ValueError, match=match):
        SaveCurve(keys, name)


def test_time_budget_refits_through_the_schedule_reference(tmp_path):
    trainer, history = fit(make_cfg(tmp_path, epochs=500, max_minutes=0.1), [])
    loop = trainer.loop
    assert len(history) < 500
    assert loop.scheduler.lr_lambdas[0] is loop.schedule
    assert loop.schedule.total_steps == len(history) * loop.steps_per_epoch  # stretched to the planned epochs
    loop.scheduler.step()  # the next LR comes from the refitted schedule: the 1e-4 floor past its end
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * loop.schedule(loop.scheduler.last_epoch))
    assert loop.schedule(loop.scheduler.last_epoch) == pytest.approx(1e-4)


def test_keep_settings_refuses_a_resume_whose_data_settings_changed(tmp_path):
    """Trainer.keep_settings: recipes name the settings that choose their images (split seed, held-out counts);
    a resume that changes one is refused naming it, and its config.json stays; unchanged ones resume."""
    from accelerate.state import AcceleratorState

    from toolkit import ConfigError

    fit(make_cfg(tmp_path, epochs=1), [])
    config = (tmp_path / "runs" / "c" / "config.json").read_bytes()
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(make_cfg(tmp_path, epochs=1, resume="auto", seed=3, lr=0.01), recipe="tiny")
    trainer.keep_settings(("epochs",), "unused")  # unchanged (lr changed but is not named): nothing raised
    with pytest.raises(ConfigError, match=r"the images would differ; changed: seed 0 -> 3\."):
        trainer.keep_settings(("seed", "epochs"), "the images would differ")
    assert (tmp_path / "runs" / "c" / "config.json").read_bytes() == config
    AcceleratorState._reset_state(reset_partial_state=True)
    Trainer(make_cfg(tmp_path, run_name="new", seed=3), recipe="tiny").keep_settings(("seed",), "a new run: no check")
