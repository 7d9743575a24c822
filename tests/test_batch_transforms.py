"""On-device batch ops (toolkit.data.batch_transforms): normalisation, resizing, crop/flip, foreground crops, noise."""

import pytest
import torch
from torch import nn

from toolkit import SegmentationObjective, SoftDiceLoss
from toolkit.data.batch_transforms import (
    ForegroundCrop, Normalize, RandomCropFlip, ResizeNormalize, standardize_per_image, to_unit_range,
)
from toolkit.data.cifar import CIFAR10_MEAN, CIFAR10_STD


def _batch(n=32, h=40, w=48):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 2, h, w, generator=gen)
    masks = torch.zeros(n, 1, h, w)
    for i in range(0, n, 2):  # even slices: one tiny 2x2 tumour somewhere; odd slices empty
        r, c = int(torch.randint(0, h - 2, (1,), generator=gen)), int(torch.randint(0, w - 2, (1,), generator=gen))
        masks[i, 0, r:r + 2, c:c + 2] = 1
    return images, masks


def test_patches_are_the_windows_at_the_returned_corners():
    images, masks = _batch()
    crop = ForegroundCrop(16, foreground_p=0.5, generator=torch.Generator().manual_seed(1))
    corners = crop.corners(masks)
    crop.generator.manual_seed(1)
    out_img, out_mask = crop(images, masks)
    assert out_img.shape == (32, 2, 16, 16) and out_mask.shape == (32, 1, 16, 16)
    for i, (r, c) in enumerate(corners.tolist()):
        assert 0 <= r <= 40 - 16 and 0 <= c <= 48 - 16
        assert torch.equal(out_img[i], images[i, :, r:r + 16, c:c + 16])
        assert torch.equal(out_mask[i], masks[i, :, r:r + 16, c:c + 16])


def test_foreground_p_one_always_catches_the_tumour_and_zero_rarely_does():
    images, masks = _batch(n=200)
    _, always = ForegroundCrop(12, foreground_p=1.0, generator=torch.Generator().manual_seed(2))(images, masks)
    has_tumour = masks.flatten(1).any(1)
    assert always.flatten(1).any(1)[has_tumour].all()
    _, never = ForegroundCrop(12, foreground_p=0.0, generator=torch.Generator().manual_seed(2))(images, masks)
    hit_rate = never.flatten(1).any(1)[has_tumour].float().mean()
    assert hit_rate < 0.5  # a 2x2 tumour lands in a random 12x12 window of 40x48 about 10% of the time


def test_the_tumour_pixel_is_drawn_uniformly_and_the_windows_are_seeded():
    masks = torch.zeros(4000, 1, 30, 30)
    masks[:, 0, 2, 2] = 1  # a 1-pixel tumour far from a 3-pixel one: a 4-px window holds one of them
    masks[:, 0, 25, 24:27] = 1
    masks[::2, 0, 25, 24:27] = 0  # every other slice holds only the 1-pixel one
    crop = ForegroundCrop(4, foreground_p=1.0, generator=torch.Generator().manual_seed(3))
    corners = crop.corners(masks)
    rows, cols = corners[:, 0], corners[:, 1]
    near_one = (rows <= 2) & (cols <= 2) & (rows + 3 >= 2) & (cols + 3 >= 2)
    assert near_one[::2].all()  # the only tumour pixel is always inside its window
    share = near_one[1::2].float().mean().item()
    assert 0.2 < share < 0.3  # 1 of the 4 tumour pixels of the other slices: 1/4 of their windows (2,000 draws)
    assert (rows >= 0).all() and (rows <= 26).all() and (cols >= 0).all() and (cols <= 26).all()
    again = ForegroundCrop(4, foreground_p=1.0, generator=torch.Generator().manual_seed(3)).corners(masks)
    assert torch.equal(corners, again)


def test_bad_options_and_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="size"):
        ForegroundCrop(0)
    with pytest.raises(ValueError, match="foreground_p"):
        ForegroundCrop(8, foreground_p=1.5)
    with pytest.raises(ValueError, match="share N, H and W"):
        ForegroundCrop(8)(torch.zeros(2, 1, 20, 20), torch.zeros(2, 1, 20, 24))


def test_objective_crops_in_training_and_sees_whole_slices_in_evaluation():
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    masks[:, :, 10:14, 10:14] = 1
    model = nn.Conv2d(1, 1, 3, padding=1)
    objective = SegmentationObjective(SoftDiceLoss(), crop=ForegroundCrop(16, 1.0))
    out = objective(model.train(), (images, masks))
    assert out.preds.shape == (4, 1, 16, 16) and out.targets.flatten(1).any(1).all()
    out = objective(model.eval(), (images, masks))
    assert out.preds.shape == (4, 1, 32, 32)


def test_normalize_matches_torchvision_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(Normalize(CIFAR10_MEAN, CIFAR10_STD)(x), (x.float() / 255 - mean) / std, atol=1e-5)


def test_crop_flip_keeps_shape_changes_images_and_is_a_shifted_window():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    y = RandomCropFlip(padding=4)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    changed = (y != x).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # 1 in 162 images is left as it was
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):  # every output is a 32x32 window of the padded image, maybe mirrored
        windows = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        assert any(torch.equal(y[i], w) or torch.equal(y[i], w.flip(-1)) for w in windows)
    assert torch.equal(RandomCropFlip(padding=0, flip_p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomCropFlip(padding=0, flip_p=0.0)(x), x)


def test_resize_normalize_is_normalize_then_bilinear_resize():
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    want = torch.nn.functional.interpolate(Normalize(mean, std)(x), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(ResizeNormalize(mean, std, 16)(x), want)
    assert torch.equal(ResizeNormalize(mean, std, None)(x), Normalize(mean, std)(x))
    with pytest.raises(ValueError, match="size must be >= 8"):
        ResizeNormalize(mean, std, 4)


def test_unit_range_and_per_image_standardisation():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    assert torch.allclose(to_unit_range(x), torch.tensor([[[[0.0, 1.0], [0.2, 0.4]]]]))
    z = standardize_per_image(torch.rand(3, 2, 8, 8) * 5 + 2)
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(z.std(dim=(-2, -1)), torch.ones(3, 2), atol=1e-3)
