"""EpochSeeded: training augmentation as a function of (seed, epoch, index), whatever the workers."""

import torch
from torch.utils.data import DataLoader, Subset

from toolkit.loop import EpochSeeded

from .utils import TinyImages, fit_tiny, tiny_cfg


def epoch_items(data: EpochSeeded, loader: DataLoader, epoch: int) -> torch.Tensor:
    data.set_epoch(epoch)
    return torch.cat([images for images, _ in loader])


def test_each_epoch_has_its_own_augmentation_whichever_worker_reads_it():
    data = EpochSeeded(TinyImages(24, augment=True), seed=3)
    plain = DataLoader(data, batch_size=5, num_workers=0)
    workers = DataLoader(data, batch_size=5, num_workers=2, persistent_workers=True)
    e0, e1 = epoch_items(data, plain, 0), epoch_items(data, plain, 1)
    assert not torch.equal(e0, e1)
    # persistent workers see each set_epoch of the main process, in any order of epochs
    for epoch, expected in ((0, e0), (1, e1), (0, e0)):
        assert torch.equal(epoch_items(data, workers, epoch), expected)
    other_seed = EpochSeeded(TinyImages(24, augment=True), seed=4)
    assert not torch.equal(epoch_items(other_seed, DataLoader(other_seed, batch_size=5), 0), e0)


def test_reseed_is_found_through_wrappers_and_plain_data_pass_through():
    inner = TinyImages(24, augment=True)
    data = EpochSeeded(Subset(inner, range(0, 24, 2)), seed=0)
    data.set_epoch(5)
    assert torch.equal(data[3][0], data[3][0])  # the same (seed, epoch, index): the same noise
    plain = TinyImages(24)
    assert torch.equal(EpochSeeded(plain, seed=0)[7][0], plain[7][0])


def test_training_with_workers_gives_the_weights_of_training_without(tmp_path):
    from accelerate.state import AcceleratorState

    _, model_a, history_a = fit_tiny(tiny_cfg(tmp_path, run_name="w0", epochs=3))  # augmented TinyImages
    AcceleratorState._reset_state(reset_partial_state=True)
    _, model_b, history_b = fit_tiny(tiny_cfg(tmp_path, run_name="w2", epochs=3, num_workers=2))
    assert [h["train_loss"] for h in history_b] == [h["train_loss"] for h in history_a]
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
