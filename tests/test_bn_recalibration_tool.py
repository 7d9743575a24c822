"""tools/bn_recalibration.py (the BatchNorm check of docs/brain-mri.md): its Dice and its re-estimation."""
import importlib.util

import numpy as np
import torch

from .utils import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("bn_recalibration", ROOT / "tools" / "bn_recalibration.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_mean_dice_scores_each_image_and_empty_pairs_as_one():
    tool = _tool()
    truth = np.zeros((3, 4, 4), bool)
    truth[0, :2] = True  # 8 px, predicted exactly
    truth[2, 0, 0] = True  # 1 px, predicted elsewhere
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0, :2] = 0.9
    probs[2, 3, 3] = 0.6
    assert tool.mean_dice(probs, truth, 0.5) == (1.0 + 1.0 + 0.0) / 3  # image 1: empty against empty
    probs[0, 0] = 0.45  # 4 of the 8 pixels fall under 0.5: Dice 2 * 4 / (4 + 8)
    assert abs(tool.mean_dice(probs, truth, 0.5) - (2 * 4 / 12 + 1.0 + 0.0) / 3) < 1e-9


class _Scans(torch.utils.data.Dataset):
    """Two uint8 scans (1, 8, 8) with masks, as run_dataset gives them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8)

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.images[i], torch.zeros(1, 8, 8, dtype=torch.uint8)


def test_recalibrate_replaces_the_statistics_by_those_of_the_given_scans():
    tool = _tool()
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(3.0)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(1))
    model[1].running_mean.fill_(-7.0)  # what training left
    model[1].running_var.fill_(9.0)
    tool.recalibrate(model, _Scans())
    x = torch.cat(list(tool._batches(_Scans())))  # standardised per image: mean 0, std 1 each
    y = 2 * x + 3
    assert not model.training and model[1].momentum is None
    assert torch.allclose(model[1].running_mean, y.mean().reshape(1), atol=1e-5)
    assert torch.allclose(model[1].running_var, y.var().reshape(1), atol=1e-4)  # unbiased, one batch of both
