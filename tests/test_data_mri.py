"""Brain-MRI folder pairing, MRISegmentationDataset and the albumentations presets (toolkit.data.mri)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toolkit.data.mri.augment import (mri_augmentation, mri_eval_transforms, mri_train_transforms,  # noqa: E402
                                     reseed_transform)
from toolkit.data.mri.dataset import MRISegmentationDataset  # noqa: E402
from toolkit.data.mri.pairs import find_image_mask_pairs  # noqa: E402
from toolkit.data.mri.io import natural_key  # noqa: E402
from toolkit.data.mri.synthetic import generate_synthetic_mri  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _fake_pair(root: Path, stem: str, img_ext=".png", mask_name="{stem}_mask.png", size=(40, 50), seed=0):
    """Write an image with a bright square and its mask {0,255}; return (image, mask) arrays."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 100, size, dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[5:20, 10:30] = 255
    img[mask > 0] = 200
    _write(root / "images" / f"{stem}{img_ext}", img)
    _write(root / "masks" / mask_name.format(stem=stem), mask)
    return img, mask


# --- synthetic generator -------------------------------------------------------------------


def test_pairs_mask_suffix_layout_natural_sort_and_formats(tmp_path):
    _fake_pair(tmp_path, "10", ".png")
    _fake_pair(tmp_path, "2", ".tif", mask_name="{stem}_mask.tiff")
    _fake_pair(tmp_path, "1", ".jpg", mask_name="{stem}_mask.png")
    _fake_pair(tmp_path, "3", ".PNG", mask_name="{stem}_mask.TIF")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    pairs = find_image_mask_pairs(tmp_path)
    assert [p[0] for p in pairs] == ["1", "2", "3", "10"]
    assert pairs[1][1].name == "2.tif" and pairs[1][2].name == "2_mask.tiff"
    assert pairs[0][2] == tmp_path / "masks" / "1_mask.png"


def test_pairs_same_name_layout(tmp_path):
    for stem in ("case_b", "case_a"):
        _fake_pair(tmp_path, stem, ".png", mask_name="{stem}.png")
    pairs = find_image_mask_pairs(tmp_path)
    assert [(i, im.name, m.name) for i, im, m in pairs] == [
        ("case_a", "case_a.png", "case_a.png"),
        ("case_b", "case_b.png", "case_b.png"),
    ]


def test_natural_key():
    assert sorted(["a10", "a9", "b1", "10", "9"], key=natural_key) == ["9", "10", "a9", "a10", "b1"]


def test_pairs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_image_mask_pairs(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="masks"):
        find_image_mask_pairs(tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_image_mask_pairs(tmp_path)
    _fake_pair(tmp_path, "1")
    _write(tmp_path / "images" / "7.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError) as err:
        find_image_mask_pairs(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "images" / "7.png") in msg and "7_mask." in msg and str(tmp_path / "masks") in msg


# --- dataset -----------------------------------------------------------------------------


def _check_item(image, mask, channels, size):
    assert image.dtype == torch.uint8 and image.shape == (channels, size, size)
    assert mask.dtype == torch.uint8 and mask.shape == (1, size, size)
    assert set(mask.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("in_channels", [1, 3])
def test_dataset_outputs_and_cache(tmp_path, in_channels):
    root = generate_synthetic_mri(tmp_path, num_images=3, size=512, seed=0, empty_fraction=0.0)
    pairs = find_image_mask_pairs(root)
    cached = MRISegmentationDataset(pairs, size=240, in_channels=in_channels)
    lazy = MRISegmentationDataset(pairs, size=240, in_channels=in_channels, cache=False)
    assert len(cached) == 3 and cached.ids == ["1", "2", "3"]
    assert cached.images.shape == (3, 240, 240, in_channels) and cached.images.flags.c_contiguous
    assert cached.masks.shape == (3, 240, 240) and cached.masks.dtype == np.uint8
    for i in range(3):
        (img_c, mask_c), (img_l, mask_l) = cached[i], lazy[i]
        _check_item(img_c, mask_c, in_channels, 240)
        assert torch.equal(img_c, img_l) and torch.equal(mask_c, mask_l)
        assert mask_c.sum() > 0 and img_c.max() > 100
    img, _ = cached[0]
    img.zero_()  # tensors are copies: the cache is untouched
    assert cached.images[0].max() > 0


def test_dataset_upsizes_and_accepts_01_masks(tmp_path):
    img = np.full((60, 60), 50, np.uint8)
    mask = np.zeros((60, 60), np.uint8)
    mask[10:30, 10:30] = 1
    _write(tmp_path / "images" / "a.png", img)
    _write(tmp_path / "masks" / "a.png", mask)
    image, m = MRISegmentationDataset(find_image_mask_pairs(tmp_path), size=120)[0]
    _check_item(image, m, 1, 120)
    assert int(m.sum()) == 4 * 400 and int(image.max()) == 50


def test_dataset_errors(tmp_path):
    _fake_pair(tmp_path, "1")
    _write(tmp_path / "images" / "2.png", np.zeros((40, 50), np.uint8))
    _write(tmp_path / "masks" / "2_mask.png", np.zeros((30, 50), np.uint8))  # wrong size
    _write(tmp_path / "images" / "3.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "masks" / "3_mask.png", np.array([[0, 1, 128, 255]] * 4, np.uint8))  # not binary
    (tmp_path / "images" / "4.png").write_bytes(b"definitely not a png")  # garbage
    _write(tmp_path / "masks" / "4_mask.png", np.zeros((40, 50), np.uint8))
    pairs = {p[0]: p for p in find_image_mask_pairs(tmp_path)}

    with pytest.raises(ValueError) as err:
        MRISegmentationDataset([pairs["1"], pairs["2"]], size=32)
    msg = str(err.value)
    assert "2_mask.png" in msg and "2.png" in msg and "30x50" in msg and "40x50" in msg
    with pytest.raises(ValueError, match=r"3_mask\.png.*\[0, 1, 128, 255\]"):
        MRISegmentationDataset([pairs["3"]], size=32)
    with pytest.raises(ValueError, match=r"4\.png"):
        MRISegmentationDataset([pairs["4"]], size=32)
    lazy = MRISegmentationDataset([pairs["1"], pairs["4"]], size=32, cache=False)  # errors surface on access
    _check_item(*lazy[0], 1, 32)
    with pytest.raises(ValueError, match=r"4\.png"):
        lazy[1]
    with pytest.raises(ValueError, match="in_channels"):
        MRISegmentationDataset([pairs["1"]], in_channels=2)


# --- transforms ----------------------------------------------------------------------------


def _threshold_pair(size=64, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)
    img[:, : size // 2] //= 2  # asymmetric, so a flip is visible
    return img[:, :, None], (img > 128).astype(np.uint8)


def test_transform_applied_jointly(tmp_path):
    img, mask = _threshold_pair()
    flip = mri_train_transforms(p_flip=1.0, p_affine=0.0, p_brightness_contrast=0.0, p_elastic=0.0)
    out = flip(image=img, mask=mask)
    assert np.array_equal(out["image"], img[:, ::-1]) and np.array_equal(out["mask"], mask[:, ::-1])
    assert np.array_equal(out["mask"], (out["image"][:, :, 0] > 128).astype(np.uint8))

    warp = mri_train_transforms(p_flip=0.0, p_affine=1.0, p_brightness_contrast=0.0)
    reseed_transform(warp, 0)
    for _ in range(5):
        out = warp(image=img, mask=mask)
        assert out["image"].dtype == np.uint8 and out["image"].shape == img.shape
        assert set(np.unique(out["mask"])) <= {0, 1}
        agree = np.mean(out["mask"] == (out["image"][:, :, 0] > 128))
        assert agree > 0.95  # the mask moved with the image (bilinear edges differ slightly)

    # through the dataset: the mask still equals the thresholded image after a p=1 flip
    _write(tmp_path / "images" / "1.png", img[:, :, 0])
    _write(tmp_path / "masks" / "1_mask.png", mask * 255)
    ds = MRISegmentationDataset(find_image_mask_pairs(tmp_path), size=64, transform=flip)
    image, m = ds[0]
    assert torch.equal(m[0], (image[0] > 128).to(torch.uint8))
    assert torch.equal(image[0], torch.from_numpy(img[:, ::-1, 0].copy()))
    assert mri_eval_transforms() is None


def test_augmentation_strength():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (64, 64), dtype=np.uint8), (7, 7), 2)[:, :, None]
    mask = (img[:, :, 0] > 128).astype(np.uint8)

    def apply(transform, seed=3, n=20):
        reseed_transform(transform, seed)
        return [transform(image=img, mask=mask) for _ in range(n)]

    # strength 1 is exactly the default preset; 0 is no augmentation; outside [0, 4] is refused
    for a, b in zip(apply(mri_augmentation(1.0)), apply(mri_train_transforms())):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert mri_augmentation(0) is None
    for bad in (-0.5, 4.5):
        with pytest.raises(ValueError, match=r"augmentation strength must be in \[0, 4\], got"):
            mri_augmentation(bad)

    def change(strength):  # mean absolute change of the image, averaged over seeded draws
        outs = apply(mri_augmentation(strength))
        for out in outs:  # shapes, dtypes and value sets are kept at every strength
            assert out["image"].shape == img.shape and out["image"].dtype == np.uint8
            assert out["mask"].shape == mask.shape and set(np.unique(out["mask"])) <= {0, 1}
        return np.mean([np.abs(o["image"].astype(float) - img).mean() for o in outs])

    assert change(0.25) < change(1.0) < change(4.0)


def test_reseed_reproducible(tmp_path):
    for k in range(4):
        img, mask = _threshold_pair(seed=k)
        _write(tmp_path / "images" / f"{k}.png", img[:, :, 0])
        _write(tmp_path / "masks" / f"{k}_mask.png", mask * 255)
    ds = MRISegmentationDataset(find_image_mask_pairs(tmp_path), size=64, transform=mri_train_transforms())

    def run(seed):
        ds.reseed(seed)
        return [t for _ in range(3) for i in range(len(ds)) for t in ds[i]]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    MRISegmentationDataset([], size=8).reseed(1)  # no transform: a no-op


def test_reseed_decorrelates_children():
    # albumentations' own set_random_seed gives every child the same seed: two flips with
    # equal p then always agree on their first call. reseed_transform must not.
    import albumentations as A

    agree = 0
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    for seed in range(64):
        t = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
        reseed_transform(t, seed)
        out = t(image=img)["image"][:, :, 0]
        hflip = np.array_equal(out, img[:, ::-1, 0]) or np.array_equal(out, img[::-1, ::-1, 0])
        vflip = np.array_equal(out, img[::-1, :, 0]) or np.array_equal(out, img[::-1, ::-1, 0])
        agree += hflip == vflip
    assert 16 < agree < 48


# --- real data (skips when ../shared/data is absent) ---------------------------------------


def test_real_figshare_folder():
    root = SHARED_DATA / "brain-mri-figshare"
    if not (root / "images").is_dir():
        pytest.skip(f"real data not present at {root}")
    pairs = find_image_mask_pairs(root)
    assert len(pairs) == 520
    assert [p[0] for p in pairs[:3]] == ["1", "2", "3"]
    ds = MRISegmentationDataset(pairs[:4] + pairs[-2:], size=240)
    for i in range(len(ds)):
        image, mask = ds[i]
        _check_item(image, mask, 1, 240)
        assert mask.sum() > 0


@pytest.mark.parametrize("strength", [0.0, 2.0])
def test_the_recipe_builds_the_augmentation_at_the_strength_given(tmp_path, strength):
    from toolkit import Trainer, generate_synthetic_mri, parse_config, segmentation_data

    from .utils import load_recipe

    recipe = load_recipe("brain_mri")
    data = generate_synthetic_mri(tmp_path / "data", num_images=10, size=64, seed=0)
    cfg = parse_config(recipe.BrainMRIConfig, ["--data-dir", str(data), "--output-dir", str(tmp_path / "runs"),
                                               "--image-size", "32", "--wandb-mode", "disabled",
                                               "--augment", str(strength)])
    trainer = Trainer(cfg, recipe="brain_mri")
    train, val = segmentation_data(cfg, trainer)[:2]
    assert val.transform is None
    if strength == 0:
        assert train.transform is None
    else:  # the preset at that strength: its rotation range is 10 degrees times the strength
        affine = next(t for t in train.transform.transforms if type(t).__name__ == "Affine")
        assert affine.rotate == (-20.0, 20.0)
    trainer.close()


def test_the_recipe_counts_the_slices_left_after_skipping_bad_files(tmp_path, capsys):
    from toolkit import Trainer, parse_config, segmentation_data

    from .mri_fake import make_folder
    from .utils import load_recipe

    recipe = load_recipe("brain_mri")
    data = make_folder(tmp_path / "data", n=10)
    good = (data / "images" / "1.png").read_bytes()
    for i in (2, 5):  # truncated images whose masks are fine: found, then dropped when read
        (data / "images" / f"{i}.png").write_bytes(good[: len(good) // 2])
    cfg = parse_config(recipe.BrainMRIConfig, ["--data-dir", str(data), "--output-dir", str(tmp_path / "runs"),
                                               "--image-size", "32", "--wandb-mode", "disabled",
                                               "--val-fraction", "0.3", "--skip-bad-files", "true"])
    trainer = Trainer(cfg, recipe="brain_mri")
    train, val = segmentation_data(cfg, trainer)[:2]
    out = capsys.readouterr().out
    assert len(train) + len(val) == 8 and f"train {len(train)}, val {len(val)}" in out and "skipped 2 bad" in out
    trainer.close()
