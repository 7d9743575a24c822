"""The moving average of the weights (``--ema-decay``): its arithmetic, and the Trainer using and resuming it."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from toolkit import Accuracy, ClassificationObjective, Trainer
from toolkit.state_folders import list_states
from toolkit.config import ConfigError, TrainConfig
from toolkit.ema import WeightEMA

from .utils import Interrupt, TinyImages, TinyNet, crash_in_epoch
from .utils import fit_tiny as fit
from .utils import tiny_cfg as make_cfg


def test_update_is_the_hand_computed_average_with_the_warm_up_ramp():
    src = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        src[0].weight.fill_(1.0)
    ema = WeightEMA(src, decay=0.5)
    expected = 1.0
    for step, value in enumerate([3.0, -1.0, 5.0, 2.0]):
        with torch.no_grad():
            src[0].weight.fill_(value)
        src[1].num_batches_tracked.fill_(step + 7)
        d = min(0.5, (1 + step) / (10 + step))  # 0.1, 2/11, 3/12, 4/13: the ramp stays below 0.5 here
        assert ema.current_decay() == pytest.approx(d)
        ema.update()
        expected = d * expected + (1 - d) * value
        torch.testing.assert_close(ema.module[0].weight, torch.full((1, 2), expected))
        assert int(ema.module[1].num_batches_tracked) == step + 7  # integer buffers are copied, not averaged
    assert ema.updates == 4 and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    ema.decay, ema.updates = 0.5, 1000
    assert ema.current_decay() == 0.5  # the configured decay caps the ramp


def test_state_dict_round_trip_and_a_model_of_another_shape_is_refused():
    ema = WeightEMA(nn.Linear(3, 2), decay=0.9)
    ema.update()
    other = WeightEMA(nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="do not fit this model"):
        WeightEMA(nn.Linear(4, 2), decay=0.9).load_state_dict(ema.state_dict())
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
            WeightEMA(nn.Linear(1, 1), decay=bad)
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        TrainConfig(wandb_mode="disabled", ema_decay=1.0)


def test_validation_and_best_pth_use_the_average_and_the_state_keeps_it(tmp_path):
    trainer, _, history = fit(make_cfg(tmp_path, epochs=3, ema_decay=0.9, keep_states=10))
    run = trainer.run_dir
    summary = json.loads((run / "summary.json").read_text())
    states = list_states(run)
    assert len(states) == 3
    best_state = states[summary["best_epoch"] - 1]
    ema_state = torch.load(best_state / "ema.pt", weights_only=True)
    raw = load_file(best_state / "model.safetensors")
    best = torch.load(run / "best.pth", weights_only=True)
    for key, value in best.items():
        torch.testing.assert_close(value, ema_state["weights"][key], rtol=0, atol=0)
    assert not torch.equal(best["conv.weight"], raw["conv.weight"])  # the average, not the raw weights
    assert ema_state["updates"] == summary["best_epoch"] * 6  # 48 images / batch 8 = 6 optimizer steps an epoch
    # the recorded accuracy is the average's: evaluating best.pth gives it again
    model = TinyNet()
    model.load_state_dict(best)
    AcceleratorState._reset_state(reset_partial_state=True)
    results = Trainer(make_cfg(tmp_path, run_name="eval"), recipe="tiny").evaluate_dataset(
        model, ClassificationObjective(), TinyImages(20, seed=1), [Accuracy()])
    assert results["accuracy"] == pytest.approx(summary["best_value"])


def test_resume_continues_the_average_exactly(tmp_path):
    cfg_a = make_cfg(tmp_path, run_name="a", epochs=3, ema_decay=0.8)
    trainer_a, _, history_a = fit(cfg_a)

    cfg_b = make_cfg(tmp_path, run_name="b", epochs=3, ema_decay=0.8)
    with pytest.raises(Interrupt):
        fit(cfg_b, callbacks=[crash_in_epoch(2)])
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer_b, _, history_b = fit(replace(cfg_b, resume=True))
    assert [h["accuracy"] for h in history_b] == [h["accuracy"] for h in history_a]
    ema_a = torch.load(list_states(trainer_a.run_dir)[-1] / "ema.pt", weights_only=True)
    ema_b = torch.load(list_states(trainer_b.run_dir)[-1] / "ema.pt", weights_only=True)
    assert ema_a["updates"] == ema_b["updates"] == 18
    for key in ema_a["weights"]:
        torch.testing.assert_close(ema_a["weights"][key], ema_b["weights"][key], rtol=0, atol=0)


def test_build_ema_is_off_at_zero_and_refuses_sharded_weights():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from toolkit.ema import build_ema

    assert build_ema(SimpleNamespace(distributed_type=DistributedType.NO), nn.Linear(1, 1), 0.0) is None
    for sharded in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match="needs the whole model on every process"):
            build_ema(SimpleNamespace(distributed_type=sharded), nn.Linear(1, 1), 0.99)


def test_resume_with_the_average_newly_on_starts_it_from_the_saved_weights(tmp_path, capsys):
    cfg = make_cfg(tmp_path, run_name="late", epochs=2)
    fit(cfg)
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, model, _ = fit(replace(cfg, resume=True, ema_decay=0.9))  # finished: nothing left to train
    assert "holds no weight average" in capsys.readouterr().out
    saved = load_file(list_states(trainer.run_dir)[-1] / "model.safetensors")
    average = trainer.loop.ema.module.state_dict()
    assert trainer.loop.ema.updates == 0
    for key in saved:
        torch.testing.assert_close(average[key], saved[key], rtol=0, atol=0)
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer, _, history = fit(replace(cfg, epochs=3, resume=True, ema_decay=0.9))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert torch.load(list_states(trainer.run_dir)[-1] / "ema.pt", weights_only=True)["updates"] == 6  # epoch 3's
