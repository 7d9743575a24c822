"""Early stopping (--patience, --min-delta): when a run stops, what it records, and resuming inside a count."""

import json
import math
from dataclasses import replace

import pytest
from safetensors.torch import load_file

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer
from toolkit.state_folders import STATE_MARKER, find_state
from toolkit.report_pages import run_page
from toolkit.report_runs import load_run
from toolkit.state import TrainState, note_patience

from .utils import TinyImages, TinyNet


class Scripted:
    """A metric whose value at its k-th compute() is ``values[start + k]`` (the last value repeats): a
    validation curve chosen by the test. ``{"score": float}``; update() ignores the batch."""

    def __init__(self, values, start: int = 0):
        self.values, self.calls = list(values), start

    def reset(self):
        pass

    def update(self, preds, targets):
        pass

    def compute(self):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"score": value}


class Crash(Exception):
    pass


def cfg_for(tmp_path, name="p", **kw):
    base = TrainConfig(output_dir=str(tmp_path / "runs"), run_name=name, epochs=10, batch_size=8, lr=0.05,
                       num_workers=0, wandb_mode="disabled", warmup_fraction=0.0)
    return replace(base, **kw)


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def fit(cfg, values, mode="max", start=0, figures=None, callbacks=()):
    """Train TinyNet monitoring the scripted ``score``; returns (trainer, history, summary.json)."""
    trainer = Trainer(cfg, recipe="tiny")
    history = trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(32), TinyImages(16, seed=1),
                          metrics=[Scripted(values, start), Accuracy()], monitor="score", mode=mode,
                          param_budget=500_000, figures=figures, callbacks=callbacks)
    reset_accelerate()
    return trainer, history, json.loads((trainer.run_dir / "summary.json").read_text())


def saved_state(run_dir) -> dict:
    return json.loads((find_state(run_dir) / STATE_MARKER).read_text())


def test_a_stalled_metric_stops_after_patience_plus_one_epochs_and_says_so(tmp_path):
    trainer, history, summary = fit(cfg_for(tmp_path, patience=2), [0.5])
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epoch 1 sets the value, 2 and 3 do not improve on it
    assert summary["stopped_early"] is True and summary["stopped_epoch"] == 3 == summary["epochs_completed"]
    assert "score did not improve" in summary["stop_reason"] and "--patience 2" in summary["stop_reason"]
    assert "at epoch 1" in summary["stop_reason"]
    state = saved_state(trainer.run_dir)
    assert state["epochs_without_improvement"] == 2 and state["stop_reason"] == summary["stop_reason"]
    html = run_page(load_run(trainer.run_dir))
    assert "stopped early" in html and "after epoch 3" in html


def test_patience_zero_never_stops(tmp_path):
    _, history, summary = fit(cfg_for(tmp_path, epochs=5), [0.5])
    assert len(history) == 5
    assert (summary["stopped_early"], summary["stopped_epoch"], summary["stop_reason"]) == (False, None, None)


def test_min_delta_counts_only_large_enough_improvements(tmp_path):
    values = [0.5, 0.55, 0.58, 0.6, 0.62, 0.64, 0.66, 0.68, 0.7, 0.72]  # +0.1 over epoch 1 only at epoch 4
    _, history, summary = fit(cfg_for(tmp_path, "d", patience=3, min_delta=0.1), values)
    assert len(history) == 7 and summary["stopped_epoch"] == 7  # reference 0.6 (epoch 4); 5, 6, 7 gain < 0.1
    _, history, summary = fit(cfg_for(tmp_path, "z", patience=3), values)
    assert len(history) == 10 and not summary["stopped_early"]  # every epoch improves by more than 0


@pytest.mark.parametrize("mode, values, min_delta, patience, stops_after", [
    ("max", [0.5, 0.5, 0.5], 0.0, 2, 3),  # equal is no improvement
    ("max", [0.5, 0.4, 0.45, 0.49], 0.0, 3, 4),  # a drop and a partial recovery do not count
    ("min", [1.0, 0.95, 0.9, 0.85], 0.1, 1, 2),  # lower is better; 0.05 < 0.1
    ("min", [1.0, 0.95, 0.9, 0.85], 0.05, 1, None),  # 0.05 >= 0.05 (up to float rounding) counts
    ("min", [1.0, 1.2, 0.9, 0.9, 0.95], 0.0, 2, 5),  # 0.9 at epoch 3 restarts the count
    ("max", [math.nan, 0.5, 0.5, 0.5], 0.0, 2, 4),  # NaN never improves; 0.5 then counts as the first value
])
def test_note_patience_counts_as_documented(mode, values, min_delta, patience, stops_after):
    state = TrainState(planned_epochs=len(values))
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        state.epoch = epoch
        if note_patience(state, value, "m", mode, patience, min_delta) and stopped_at is None:
            stopped_at = epoch
    assert stopped_at == stops_after, state


def test_stop_reason_names_the_last_improving_validation_with_eval_every():
    """Validations after epochs 3, 6, 9 (--eval-every 3): 0.5 at epoch 3, then no gain; patience 2 stops at 9."""
    state = TrainState(planned_epochs=20)
    for epoch in range(1, 10):
        state.epoch = epoch
        state.history.append({"epoch": epoch, "train_loss": 1.0})
        if epoch % 3 == 0:
            state.history[-1]["m"] = 0.5
            note_patience(state, 0.5, "m", "max", 2, 0.0)
    assert state.stop_reason is not None
    assert "for 2 validations" in state.stop_reason and "0.5 at epoch 3" in state.stop_reason, state.stop_reason


def test_resume_inside_a_patience_count_stops_at_the_same_epoch(tmp_path):
    values = [0.5, 0.6, 0.55, 0.6, 0.58, 0.59, 0.7]  # best 0.6 at epoch 2; patience 3 stops after epoch 5
    ref, ref_history, ref_summary = fit(cfg_for(tmp_path, "ref", patience=3), values)
    assert ref_summary["stopped_epoch"] == 5

    class CrashInEpoch4:
        def on_epoch_end(self, trainer, state, record, sample):
            if state.epoch == 4:
                raise Crash()  # before epoch 4's state is saved: the newest is epoch 3's, one epoch into the count

    with pytest.raises(Crash):
        fit(cfg_for(tmp_path, "b", patience=3), values, callbacks=[CrashInEpoch4()])
    reset_accelerate()
    state = saved_state(tmp_path / "runs/b")
    assert (state["epoch"], state["epochs_without_improvement"], state["stop_reason"]) == (3, 1, None)

    resumed, history, summary = fit(cfg_for(tmp_path, "b", patience=3, resume="auto"), values, start=3)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in history] == [h["score"] for h in ref_history]
    assert (summary["stopped_epoch"], summary["stop_reason"]) == (5, ref_summary["stop_reason"])
    wa, wb = load_file(find_state(ref.run_dir) / "model.safetensors"), load_file(find_state(resumed.run_dir) /
                                                                                  "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)

    _, again, summary = fit(cfg_for(tmp_path, "b", patience=3, resume=True), values, start=5)
    assert len(again) == 5 and summary["stopped_epoch"] == 5  # a stopped run stays stopped with the same patience
    _, longer, summary = fit(cfg_for(tmp_path, "b", patience=0, epochs=6, resume=True), values, start=5)
    assert len(longer) == 6 and not summary["stopped_early"]  # --patience 0 lets it continue to --epochs


def test_stopping_early_within_a_time_budget(tmp_path):
    _, history, summary = fit(cfg_for(tmp_path, epochs=500, max_minutes=1.0, patience=1), [0.5])
    assert len(history) == 2 and summary["stopped_epoch"] == 2


def test_eval_every_validates_every_nth_epoch_and_the_last(tmp_path):
    """--eval-every 3 over 7 epochs validates after epochs 3, 6 and 7 (the last): only those records hold the
    metrics, best.pth follows them, and patience counts validations."""
    trainer, history, summary = fit(cfg_for(tmp_path, "e", epochs=7, eval_every=3), [0.2, 0.9, 0.4])
    assert [h["epoch"] for h in history] == list(range(1, 8))
    assert [h["epoch"] for h in history if "score" in h] == [3, 6, 7]
    assert [h["score"] for h in history if "score" in h] == [0.2, 0.9, 0.4]
    assert all("val_loss" not in h and "train_loss" in h for h in history if h["epoch"] not in (3, 6, 7))
    assert summary["best_epoch"] == 6 and summary["best_value"] == 0.9 and summary["epochs_completed"] == 7
    assert (trainer.run_dir / "figures" / "history.png").is_file()

    _, history, summary = fit(cfg_for(tmp_path, "ep", epochs=20, eval_every=2, patience=2), [0.5])
    assert [h["epoch"] for h in history if "score" in h] == [2, 4, 6]  # 2 validations without improvement
    assert summary["stopped_epoch"] == 6 and "--patience 2" in summary["stop_reason"]
    # the reason counts validations and names the epoch that last improved (2), not epoch 6 - 2
    assert "for 2 validations" in summary["stop_reason"] and "at epoch 2" in summary["stop_reason"]


def test_eval_every_validates_the_epoch_the_time_budget_ends_on(tmp_path):
    _, history, summary = fit(cfg_for(tmp_path, "eb", epochs=500, max_minutes=0.1, eval_every=1000), [0.3])
    assert 1 <= len(history) < 500
    assert [h["epoch"] for h in history if "score" in h] == [len(history)]  # only the last, never epoch 1000
    assert summary["best_epoch"] == len(history)


def test_eval_every_validates_late_when_the_budget_cuts_the_plan_short(tmp_path, monkeypatch):
    """The plan (10 epochs) is cut to 3 after epoch 3, which was not due: it is validated before the run ends."""
    import toolkit.epochs as epochs_module

    monkeypatch.setattr(epochs_module, "plan_epochs", lambda state, max_epochs, budget_s: max(state.epoch, 3))
    trainer, history, summary = fit(cfg_for(tmp_path, "late", epochs=10, max_minutes=5.0, eval_every=4), [0.7])
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["epoch"] for h in history if "score" in h] == [3]
    assert summary["best_epoch"] == 3 and (trainer.run_dir / "best.pth").is_file()
    assert json.loads((trainer.run_dir / "history.json").read_text())[-1]["score"] == 0.7


def test_sample_figures_are_drawn_at_each_new_best_and_at_the_end(tmp_path):
    """The recipe's figures (slow to draw: matplotlib, PNG) come at validations that save a new best.pth and at
    the last epoch, also when patience ends the run; history.png after every epoch."""
    import matplotlib.pyplot as plt

    def figures(sample):
        return {"sample": plt.figure(figsize=(1, 1))}

    def drawn(trainer):
        return sorted(int(p.stem.split("epoch")[1]) for p in (trainer.run_dir / "figures").glob("sample_epoch*.png"))

    trainer, _, summary = fit(cfg_for(tmp_path, "f", epochs=6), [0.3, 0.5, 0.4, 0.6, 0.2, 0.1], figures=figures)
    assert summary["best_epoch"] == 4 and drawn(trainer) == [1, 2, 4, 6]
    assert (trainer.run_dir / "figures" / "history.png").is_file()
    trainer, _, summary = fit(cfg_for(tmp_path, "g", epochs=10, patience=2), [0.3, 0.5, 0.4, 0.2], figures=figures)
    assert summary["stopped_epoch"] == 4 and drawn(trainer) == [1, 2, 4]
