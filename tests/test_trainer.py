import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from toolkit import Accuracy, ClassificationObjective, ParameterBudgetError, Trainer
from toolkit.checkpoint import load_weights
from toolkit.state_folders import find_state
from toolkit.config import ConfigError
from toolkit.state import TrainState, plan_epochs

from .utils import Interrupt, TinyImages, TinyNet, crash_in_epoch, logged
from .utils import fit_tiny as fit
from .utils import tiny_cfg as make_cfg


def test_fit_learns_and_writes_the_run_folder(tmp_path):
    trainer, _, history = fit(make_cfg(tmp_path, epochs=6))
    run = trainer.run_dir
    assert len(history) == 6 and [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("config.json", "history.json", "summary.json", "best.pth", "best.safetensors",
                 "state/latest", "figures/history.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "history.json").read_text()) == history
    summary = json.loads((run / "summary.json").read_text())
    best = max(h["accuracy"] for h in history)
    assert summary["best_value"] == best
    assert history[summary["best_epoch"] - 1]["accuracy"] == best
    assert summary["trainable_params"] == sum(p.numel() for p in TinyNet().parameters())
    assert summary["train_images_per_s"] > 0 and summary["wall_time_s"] > 0
    state = torch.load(run / "best.pth", weights_only=True)
    fresh = TinyNet()
    fresh.load_state_dict(state)  # plain state dict of the unwrapped model
    assert json.loads((run / "config.json").read_text())["epochs"] == 6


def test_over_budget_model_is_refused_before_training(tmp_path):
    trainer = Trainer(make_cfg(tmp_path), recipe="tiny")
    with pytest.raises(ParameterBudgetError, match=r"TinyNet has 1,026 trainable parameters, over .* budget of 1,000"):
        trainer.fit(TinyNet(width=64), ClassificationObjective(), TinyImages(), TinyImages(8),
                    metrics=[Accuracy()], monitor="accuracy", param_budget=1000)
    assert not (trainer.run_dir / "state").exists()


def test_existing_run_needs_resume_and_resume_needs_a_state(tmp_path):
    fit(make_cfg(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(make_cfg(tmp_path, epochs=1), recipe="tiny")
    with pytest.raises(ConfigError, match="no complete state"):
        Trainer(make_cfg(tmp_path, run_name="other", resume=True), recipe="tiny")


def test_resume_continues_at_next_epoch_with_identical_weights(tmp_path):
    cfg_a = make_cfg(tmp_path, run_name="a", epochs=4)
    trainer_a, _, history_a = fit(cfg_a)

    cfg_b = make_cfg(tmp_path, run_name="b", epochs=4)
    with pytest.raises(Interrupt):
        fit(cfg_b, callbacks=[crash_in_epoch(3)])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    state = json.loads((find_state(tmp_path / "runs/b") / "trainer_state.json").read_text())
    assert state["epoch"] == 2  # epoch 3 was lost with the crash, before its state was written

    trainer_b, _, history_b = fit(replace(cfg_b, resume=True))
    assert [h["epoch"] for h in history_b] == [1, 2, 3, 4]
    for ha, hb in zip(history_a, history_b):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-6)
    wa = load_file(find_state(trainer_a.run_dir) / "model.safetensors")
    wb = load_file(find_state(trainer_b.run_dir) / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def test_a_resume_that_trains_on_drops_the_stale_summary(tmp_path):
    from accelerate.state import AcceleratorState

    trainer, _, _ = fit(make_cfg(tmp_path, epochs=1))
    assert (trainer.run_dir / "summary.json").is_file()
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(Interrupt):  # killed while training epoch 2 of 2: the run is unfinished again
        fit(make_cfg(tmp_path, epochs=2, resume=True), callbacks=[crash_in_epoch(2)])
    assert not (trainer.run_dir / "summary.json").exists()  # not the first fit's best and epoch count
    AcceleratorState._reset_state(reset_partial_state=True)


def test_resume_auto_starts_fresh_when_there_is_no_state(tmp_path):
    trainer, _, history = fit(make_cfg(tmp_path, run_name="tiny-a", epochs=1, resume="auto"))
    assert not trainer.resuming and len(history) == 1 and find_state(trainer.run_dir) is not None
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, _, _ = fit(make_cfg(tmp_path, run_name="", epochs=1, resume="auto"))  # no name: the newest run
    assert trainer.resuming and trainer.run_dir.name == "tiny-a"
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, _, _ = fit(make_cfg(tmp_path / "other", run_name="", epochs=1, resume="auto"))  # none there: a new one
    assert not trainer.resuming and trainer.run_dir.name.startswith("tiny-")


def test_resume_auto_continues_an_interrupted_run_and_leaves_a_finished_one_as_resume_does(tmp_path):
    with pytest.raises(Interrupt):
        fit(make_cfg(tmp_path, epochs=3), callbacks=[crash_in_epoch(2)])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    first = json.loads((tmp_path / "runs/t/history.json").read_text())[0]
    trainer, _, history = fit(make_cfg(tmp_path, epochs=3, resume="auto"))
    assert trainer.resuming and [h["epoch"] for h in history] == [1, 2, 3] and history[0] == first
    AcceleratorState._reset_state(reset_partial_state=True)
    finished = find_state(trainer.run_dir)
    results = {}
    for resume in ("auto", True):  # a finished run: nothing is trained again, its summary is written again
        trainer, _, again = fit(make_cfg(tmp_path, epochs=3, resume=resume))
        AcceleratorState._reset_state(reset_partial_state=True)
        summary = json.loads((trainer.run_dir / "summary.json").read_text())
        results[resume] = (again, summary["epochs_completed"], find_state(trainer.run_dir))
    assert results["auto"] == results[True] == (history, 3, finished)


def test_resume_refuses_optimizer_settings_its_state_would_override(tmp_path):
    from accelerate.state import AcceleratorState

    with pytest.raises(Interrupt):
        fit(make_cfg(tmp_path, epochs=2), callbacks=[crash_in_epoch(2)])
    AcceleratorState._reset_state(reset_partial_state=True)
    config = (tmp_path / "runs/t/config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"changed: lr 0.05 -> 0.5, scheduler 'onecycle' -> 'cosine'"):
        fit(make_cfg(tmp_path, epochs=2, lr=0.5, scheduler="cosine", resume=True))  # would go on at 0.05, onecycle
    AcceleratorState._reset_state(reset_partial_state=True)
    assert (tmp_path / "runs/t/config.json").read_bytes() == config  # it keeps the settings it trains with


def test_resuming_a_finished_run_with_fewer_epochs_keeps_its_plan_and_summary(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    fit(make_cfg(tmp_path, epochs=3))
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    trainer, _, history = fit(make_cfg(tmp_path, epochs=2, resume=True))  # nothing to train: 3 epochs are done
    AcceleratorState._reset_state(reset_partial_state=True)
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert len(history) == summary["epochs_completed"] == summary["epochs_planned"] == summary["epochs_asked"] == 3
    assert summary["mixed_precision"] == "bf16"  # how it trained, not this launch that trained nothing


def test_bf16_autocast_from_the_launch_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    trainer, model, history = fit(make_cfg(tmp_path, epochs=2))
    assert trainer.accelerator.mixed_precision == "bf16"
    assert model.seen_dtype == torch.bfloat16  # inside the model the convolution ran in bf16
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert json.loads((trainer.run_dir / "summary.json").read_text())["mixed_precision"] == "bf16"


def test_a_compiled_model_writes_weights_that_load_into_the_plain_model(tmp_path, monkeypatch):
    # `accelerate launch --dynamo_backend X` wraps the model in torch.compile, whose state dict prefixes every key
    # with "_orig_mod."; best.pth must still load into the plain model (`toolkit evaluate`, `--init-from`)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")
    trainer, model, _ = fit(make_cfg(tmp_path, epochs=1))
    assert isinstance(trainer.loop.model, torch._dynamo.eval_frame.OptimizedModule)  # it really was compiled
    plain = TinyNet().state_dict()
    for name in ("best.pth", "best.safetensors"):
        saved = load_file(trainer.run_dir / name) if name.endswith("safetensors") else torch.load(
            trainer.run_dir / name, weights_only=True)
        assert sorted(saved) == sorted(plain)
        TinyNet().load_state_dict(saved)
    prefixed = {"_orig_mod." + k: v for k, v in plain.items()}  # such a file written by torch.save elsewhere
    torch.save(prefixed, tmp_path / "compiled.pth")
    assert sorted(load_weights(tmp_path / "compiled.pth")) == sorted(plain)


def test_gradient_accumulation_and_cosine_schedule(tmp_path):
    trainer, _, history = fit(make_cfg(tmp_path, epochs=2, grad_accum_steps=2, scheduler="cosine"))
    assert len(history) == 2
    assert history[-1]["lr"] < 0.05 * 0.6  # cosine decays towards 0 over the 2 epochs


def test_time_budget_plans_epochs_that_fit(tmp_path, capsys):
    trainer, _, history = fit(make_cfg(tmp_path, epochs=500, max_minutes=0.25))
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert 2 <= len(history) < 500  # a tiny epoch takes well under a second; 500 of them do not fit in 15 s
    assert summary["epochs_planned"] == summary["epochs_completed"] == len(history) and summary["epochs_asked"] == 500
    assert f"fitted {len(history)} of the 500 epochs" in capsys.readouterr().out
    assert summary["wall_time_s"] < 0.25 * 60 * 1.5  # the 15-second budget, with the epoch in flight


def test_non_finite_loss_stops_with_the_step_and_last_state(tmp_path):
    class Exploding(TinyNet):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(FloatingPointError, match=r"loss became nan at optimizer step \d+ \(epoch 1\); no state was "
                                                 r"saved yet, so nothing can be resumed"):
        fit(make_cfg(tmp_path, epochs=1), model=Exploding())


def test_wandb_offline_run_is_written(tmp_path):
    trainer, _, history = fit(make_cfg(tmp_path, epochs=2, wandb_mode="offline", log_every=1))
    runs = list((trainer.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (run_file,) = runs[0].glob("run-*.wandb")
    rows, summary = logged(run_file)
    steps = [r for r in rows if "train/loss" in r and "epoch" not in r]
    epochs = [r for r in rows if "epoch" in r]
    assert len(steps) >= 8  # log_every=1: one row per optimizer step
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [r["val/accuracy"] for r in epochs] == pytest.approx([h["accuracy"] for h in history])
    assert [r["val/loss"] for r in epochs] == pytest.approx([h["val_loss"] for h in history])
    assert epochs[-1]["figures/history/_type"] == "image-file"
    assert summary["best_value"] == max(h["accuracy"] for h in history)


def test_refit_never_sends_a_finished_warmup_back_into_warmup():
    from toolkit.optim import StepSchedule

    s = StepSchedule("onecycle", total_steps=100, warmup_fraction=0.1)  # warm-up: steps 0..9
    assert s(4) < 1.0 and s(10) == pytest.approx(1.0)
    s.refit(50, step=5)  # still warming up: the warm-up shrinks with the plan
    assert s.warmup() == pytest.approx(5.0)
    s.refit(1000, step=20)  # warm-up over at step 20: it stays over although 10% of 1000 is 100
    assert s.warmup() == pytest.approx(5.0) and s(20) == pytest.approx(1.0, abs=1e-3)
    assert s(999) < 0.01  # and the decay reaches its floor at the new end
    assert vars(s)["warmup_steps"] == pytest.approx(5.0)  # a plain attribute: LambdaLR saves and resumes it


def test_a_fractional_warmup_never_lifts_the_lr_above_its_peak():
    from toolkit.optim import StepSchedule

    for kind in ("onecycle", "cosine", "constant"):
        s = StepSchedule(kind, total_steps=25, warmup_fraction=0.1)  # warm-up of 2.5 steps
        assert max(s(i) for i in range(25)) == pytest.approx(1.0), kind


def test_time_budget_plan_ignores_one_slow_epoch():
    """The planner predicts from the median of the last five epochs: a single slow epoch barely moves the plan."""
    st = TrainState(planned_epochs=1000)
    plans = []
    for epoch, seconds in enumerate([10, 10, 10, 10, 10, 60, 10, 10], start=1):  # epoch 6 is slowed by a load
        st.epoch, st.wall_time_s = epoch, st.wall_time_s + seconds
        st.planned_epochs = plan_epochs(st, max_epochs=1000, budget_s=10 * 60)
        plans.append(st.planned_epochs)
    assert plans[4] == 5 + (600 - 50) // 10, plans  # 60 epochs in 10 minutes at 10 s each
    assert plans[5] == 5 + 1 + (600 - 110) // 10  # the slow epoch costs its own time, not a shrunken plan
    assert plans[-1] == 8 + (600 - 130) // 10


def test_an_undefined_first_validation_does_not_stay_the_best(tmp_path):
    class FirstUndefined(Accuracy):  # NaN at the first validation (nothing to measure yet), numbers after it
        def compute(self):
            self.calls = getattr(self, "calls", 0) + 1
            return {**super().compute(), **({"accuracy": math.nan} if self.calls == 1 else {})}

    trainer = Trainer(make_cfg(tmp_path, epochs=3), recipe="tiny")
    history = trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(48), TinyImages(20, seed=1),
                          metrics=[FirstUndefined()], monitor="accuracy", param_budget=None)
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert math.isnan(history[0]["accuracy"])
    assert summary["best_value"] == max(h["accuracy"] for h in history[1:]) and summary["best_epoch"] > 1


def test_undefined_metrics_are_null_in_history_and_summary(tmp_path):
    class WithUndefined(Accuracy):  # a figure with nothing to measure, as empty_correct without empty slices
        def compute(self):
            return {**super().compute(), "undefined": math.nan}

    trainer = Trainer(make_cfg(tmp_path, epochs=2), recipe="tiny")
    history = trainer.fit(TinyNet(), ClassificationObjective(), TinyImages(16), TinyImages(8, seed=1),
                          metrics=[WithUndefined()], monitor="accuracy", param_budget=500_000)
    assert math.isnan(history[-1]["undefined"])  # in memory (and the resumable state) it stays NaN

    def strict(name):
        return json.loads((trainer.run_dir / name).read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert [h["undefined"] for h in strict("history.json")] == [None, None]
    assert strict("summary.json")["final"]["undefined"] is None


def test_unnamed_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """Two launches (say W&B sweep agents side by side) in one second: the second is not written into the first's
    folder, which holds no state yet, so nothing else would stop it."""
    import toolkit.runs

    monkeypatch.setattr(toolkit.runs.time, "strftime", lambda fmt: "20261203-140000")
    first = Trainer(make_cfg(tmp_path, run_name=""), recipe="tiny").run_dir
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    second = Trainer(make_cfg(tmp_path, run_name=""), recipe="tiny").run_dir
    assert (first.name, second.name) == ("tiny-20261203-140000", "tiny-20261203-140000-2")
    assert first.is_dir() and second.is_dir()


def test_a_runs_config_json_gives_its_settings_back_through_config(tmp_path):
    """`--config runs/<run>/config.json` reruns a run's settings: what the Trainer writes parses back equal."""
    from toolkit import TrainConfig, parse_config

    cfg = make_cfg(tmp_path, epochs=3, max_minutes=2.5, resume="auto")
    trainer = Trainer(cfg, recipe="tiny")
    again = parse_config(TrainConfig, ["--config", str(trainer.run_dir / "config.json")], exit_on_error=False)
    assert again == cfg
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_per_step_path_asks_importlib_for_lomo_at_most_once_and_copies_without_waiting(tmp_path, monkeypatch):
    """Accelerate's optimizer step asks whether ``lomo_optim`` is installed twice a step (an uncached sys.path
    search); the Trainer makes it ask once per process, with the same answer. Batches are sent non-blocking."""
    import importlib.util

    import accelerate.optimizer
    from accelerate.utils import is_lomo_available as uncached

    asked, find_spec = [], importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: (asked.append(name) if name == "lomo_optim" else None,
                                               find_spec(name, *a, **k))[1])
    trainer, _, history = fit(make_cfg(tmp_path, epochs=2))  # 2 x 6 optimizer steps
    assert len(history) == 2 and len(asked) <= 1
    assert accelerate.optimizer.is_lomo_available() == uncached()
    assert trainer.accelerator.dataloader_config.non_blocking is True
