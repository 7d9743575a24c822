"""MRI data sources (toolkit.data.mri.discover, .io, .channels): layout detection, reading, channel choice,
slice rules, bad input.

Each layout is written in its real format in tmp_path: PNG/TIFF folders (cv2), Kaggle-LGG style
3-channel TIFFs in patient folders, figshare-style MATLAB v7.3 .mat files (h5py, stored transposed
as MATLAB does) and BraTS-style NIfTI volumes (nibabel).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toolkit.data.errors import MRIDataError  # noqa: E402
from toolkit.data.mri.channels import resolve_channels  # noqa: E402
from toolkit.data.mri.dataset import MRISegmentationDataset  # noqa: E402
from toolkit.data.mri.discover import discover_mri_slices  # noqa: E402
from toolkit.data.mri.folders import discover_folders  # noqa: E402
from toolkit.data.mri.io import read_image, read_slice, to_uint8  # noqa: E402
from toolkit.data.splits import split_records  # noqa: E402

from .mri_fake import (  # noqa: E402
    MODALITIES, imwrite, lights, mat_image, square_mask, disjoint_patients, make_brats, make_folder, make_lgg,
    make_mat, write_mat,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --- detection and reading, per layout -----------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_folder_layout(tmp_path, ext):
    make_folder(tmp_path, n=3, ext=ext)
    found = discover_mri_slices(tmp_path)
    assert found.source == "folder" and found.skipped == [] and found.patients == []
    assert found.intensity == "per_slice" and found.labels is None and found.slices[0].spacing is None
    assert [s.id for s in found.slices] == ["1", "2", "3"] and found.slices[0].patient is None
    img, mask = read_slice(found.slices[1])
    assert img.shape == (32, 40, 1) and img.dtype == np.uint8 and mask.shape == (32, 40) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 8 * 14
    assert abs(int(img[0, 0, 0]) - 32) <= 2  # jpg is lossy
    rgb = discover_mri_slices(tmp_path, channels="rgb").slices[0]
    assert rgb.num_channels == 3 and read_slice(rgb)[0].shape == (32, 40, 3)


def test_folder_masks_beside_images(tmp_path):
    for i in (2, 10):
        imwrite(tmp_path / f"{i}.png", np.full((16, 16), 50, np.uint8))
        imwrite(tmp_path / f"{i}_mask.png", square_mask((16, 16)))
    found = discover_mri_slices(tmp_path)
    assert found.source == "folder" and [s.id for s in found.slices] == ["2", "10"]
    assert read_slice(found.slices[1])[1].sum() == 8 * 10


def test_lgg_layout_and_channels(tmp_path):
    make_lgg(tmp_path)
    for where in (tmp_path, tmp_path / "kaggle_3m"):  # the folder above kaggle_3m, or kaggle_3m itself
        found = discover_mri_slices(where)
        assert found.source == "lgg" and found.root == tmp_path / "kaggle_3m"
    assert len(found.slices) == 24 and len(found.patients) == 4
    first = found.slices[0]
    assert first.id == "TCGA_XX_1000_20000100_1" and first.patient == "TCGA_XX_1000_20000100"
    assert [s.id.rsplit("_", 1)[1] for s in found.slices[:6]] == ["1", "2", "3", "4", "5", "6"]
    img, mask = read_slice(found.slices[1])  # default: FLAIR only
    assert img.shape == (32, 32, 1) and int(img[0, 0, 0]) == 102 and mask.max() == 0
    expect = {"all": [10, 102, 200], 3: [10, 102, 200], 0: [10, 102, 200], "pre,post": [10, 200], (2, 1): [200, 102],
              "flair": [102], 1: [102], "1": [102], "post-contrast": [200]}
    for choice, values in expect.items():
        rec = discover_mri_slices(tmp_path, channels=choice).slices[1]
        assert read_slice(rec)[0][0, 0].tolist() == values, choice
    assert resolve_channels("lgg", "post,flair") == (2, 1) and resolve_channels("brats", 4) == (0, 1, 2, 3)
    # 0: what the data has (the recipes' in_channels default): every channel, one grey channel for a folder
    assert resolve_channels("brats", 0) == (0, 1, 2, 3) and resolve_channels("folder", 0) == ()
    assert resolve_channels("figshare_mat", 0) == (0,)
    assert read_image(found.slices[1].image_path, (1,))[0, 0].tolist() == [102]  # e.g. for predict
    masks = [read_slice(s)[1] for s in found.slices]
    assert sum(m.max() == 0 for m in masks) == 16  # two thirds empty
    for bad in ("grey", "t1ce", 2, [0, 0]):
        with pytest.raises(ValueError, match="channel"):
            discover_mri_slices(tmp_path, channels=bad)


def test_mat_patients_whose_ids_differ_by_trailing_letters_are_one_person(tmp_path):
    # figshare stores some patients under several PIDs (MR024780B, MR024780D): one person, as metadata.csv groups
    # them, or a split by patient puts the same person on both sides
    make_mat(tmp_path, pids=("MR024780B", "MR024780D", "MR024780", "MR2", "MR3"))
    found = discover_mri_slices(tmp_path)
    assert found.patients == ["MR2", "MR3", "MR024780"] and found.slices[1].patient == "MR024780"


def test_mat_layout(tmp_path):
    make_mat(tmp_path)
    found = discover_mri_slices(tmp_path)
    assert found.source == "figshare_mat" and len(found.slices) == 8
    assert [s.id for s in found.slices] == [str(i) for i in range(1, 9)]
    assert found.patients == ["MR1", "MR2", "MR3", "MR4"] and found.slices[4].patient == "MR2"
    img, mask = read_slice(found.slices[0])
    image, true_mask = mat_image(seed=1)
    assert img.shape == (40, 56, 1) and img.dtype == np.uint8 and mask.shape == (40, 56)  # transposed back
    assert np.array_equal(mask, true_mask)
    assert img[0, 0, 0] == 0 and img.max() == 255 and img[mask > 0].min() == 255  # tumour at the top of range
    brain = img[4:36, 4:52, 0][true_mask[4:36, 4:52] == 0]
    assert brain.std() > 30 and np.percentile(brain, 50) > 60  # not crushed by the 30000 outlier


def test_brats_layout_slice_rules_and_modalities(tmp_path):
    make_brats(tmp_path)
    found = discover_mri_slices(tmp_path)  # default rule: nonempty (brain) slices, FLAIR
    assert found.source == "brats" and len(found.patients) == 3
    assert [s.index for s in found.slices[:6]] == [1, 2, 3, 4, 5, 6] and len(found.slices) == 18
    s = found.slices[2]
    assert s.id == "BraTS20_Training_001_z003" and s.patient == "BraTS20_Training_001" and s.index == 3
    img, mask = read_slice(s)
    assert img.shape == (240, 240, 1) and img.dtype == np.uint8 and mask.shape == (240, 240)
    # NIfTI volumes are z-scored per volume over the brain (toolkit.data.mri.nifti), no longer stretched per
    # slice to 0..255: the uniform 50..900 brain lies within about +-1.8 std, i.e. well inside 0..255.
    assert lights(img[..., 0], "flair") and 40 < img[img > 0].min() < img.max() < 215
    assert s.spacing == (1.0, 1.0, 1.0) and found.spacings["BraTS20_Training_002"] == (1.0, 1.0, 1.0)
    assert found.intensity == "zscore" and found.labels is None and found.regions is None
    assert set(np.unique(read_slice(found.slices[3], labels=True)[1])) == {0, 2}  # slice 4: label (1, 2, 4)[4 % 3]
    assert mask.sum() == 40 * 40 and set(np.unique(mask)) == {0, 1}  # label 4 counts as tumour
    counts = {"all": 8, "tumour": 2, "tumor": 2, "tumour+2": 4, "tumour+99": 6, "nonempty": 6}
    for rule, n in counts.items():
        assert len(discover_mri_slices(tmp_path, slice_rule=rule).slices) == 3 * n, rule
    assert [r.index for r in discover_mri_slices(tmp_path, slice_rule="tumour+2").slices[:4]] == [1, 3, 4, 6]
    every = discover_mri_slices(tmp_path, channels="all", slice_rule="tumour").slices[0]
    img, _ = read_slice(every)
    assert img.shape == (240, 240, 4)
    for k, m in enumerate(MODALITIES):
        assert lights(img[..., k], m), m
    t2 = read_slice(discover_mri_slices(tmp_path, channels="t2,t1ce").slices[2])[0]
    assert lights(t2[..., 1], "t1ce") and lights(t2[..., 0], "t2")
    with pytest.raises(ValueError, match="slice_rule"):
        discover_mri_slices(tmp_path, slice_rule="some")
    with pytest.raises(ValueError, match="NIfTI"):
        discover_mri_slices(make_folder(tmp_path / "f", n=2), slice_rule="tumour")


def test_brats_2023_naming(tmp_path):
    make_brats(tmp_path, cases=2, shape=(24, 24, 6), tumour=(2,), brain=range(1, 5), style="2023")
    found = discover_mri_slices(tmp_path, channels="t1c", slice_rule="tumour")
    assert found.source == "brats"
    assert [s.id for s in found.slices] == ["BraTS-GLI-00000-000_z002", "BraTS-GLI-00001-000_z002"]
    assert found.slices[0].image_path.name.endswith("-t1c.nii.gz")


def test_dataset_over_every_source(tmp_path, monkeypatch):
    from toolkit.data.mri import nifti as mri_nifti

    roots = {"folder": make_folder(tmp_path / "f", n=3), "lgg": make_lgg(tmp_path / "l", patients=2, slices=2),
             "figshare_mat": make_mat(tmp_path / "m", pids=("a", "b")),
             "brats": make_brats(tmp_path / "b", cases=2, shape=(40, 40, 6), tumour=(2,), brain=range(1, 5))}
    loads = []
    real = mri_nifti.load_nifti
    monkeypatch.setattr(mri_nifti, "load_nifti", lambda p, data=True: loads.append(p) or real(p, data))
    for source, root in roots.items():
        recs = discover_mri_slices(root, channels="all").slices
        loads.clear()
        cached = MRISegmentationDataset(recs, size=48, num_threads=2)
        assert len(loads) == (2 * 5 if source == "brats" else 0)  # each of 2 cases' 5 volumes read once
        lazy = MRISegmentationDataset(recs, size=48, cache=False)
        c = recs[0].num_channels
        assert cached.images.shape == (len(recs), 48, 48, c) and cached.in_channels == c, source
        for i in range(len(recs)):
            (img, mask), (img2, mask2) = cached[i], lazy[i]
            assert img.dtype == torch.uint8 and img.shape == (c, 48, 48) and mask.shape == (1, 48, 48)
            assert torch.equal(img, img2) and torch.equal(mask, mask2) and set(mask.unique().tolist()) <= {0, 1}
    assert pickle.loads(pickle.dumps(recs[0])) == recs[0]
    with pytest.raises(ValueError, match="in_channels"):
        MRISegmentationDataset(recs, in_channels=1, cache=False)


def test_to_uint8():
    assert to_uint8(np.zeros((4, 4), np.float32)).tolist() == np.zeros((4, 4), np.uint8).tolist()
    a = np.zeros((10, 100), np.int16)
    a[:, 1:] = np.arange(1, 100)
    a[0, 0] = 32000  # outlier
    out = to_uint8(a)
    assert out.dtype == np.uint8 and out[1, 0] == 0 and out.max() == 255 and out[5, 50] in range(120, 135)
    assert set(np.unique(to_uint8(np.array([[0, 7.0], [7, np.nan]])))) == {0, 255}
    u8 = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert to_uint8(u8) is u8


# --- detection errors --------------------------------------------------------------------------------


def test_detection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_mri_slices(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="empty"):
        discover_mri_slices(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "scans").mkdir()
    imwrite(tmp_path / "scans" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError) as err:
        discover_mri_slices(tmp_path)
    msg = str(err.value)
    assert "scans/" in msg and "1 .txt" in msg and "kaggle_3m" in msg and "_seg.nii.gz" in msg and ".mat" in msg
    make_folder(tmp_path, n=2)
    make_mat(tmp_path / "mats", pids=("a",))
    with pytest.raises(ValueError, match="more than one"):
        discover_mri_slices(tmp_path)
    assert discover_mri_slices(tmp_path, source="figshare_mat").source == "figshare_mat"


# --- bad input -------------------------------------------------------------------------------------------


def _bad_folder(root: Path) -> dict[str, Path]:
    make_folder(root, n=3)
    bad = {}
    good = (root / "images" / "1.png").read_bytes()
    bad["truncated"] = root / "images" / "4.png"
    bad["truncated"].write_bytes(good[: len(good) // 2])
    imwrite(root / "masks" / "4_mask.png", square_mask((32, 40)))
    bad["size"] = imwrite(root / "masks" / "5_mask.png", square_mask((30, 40)))
    imwrite(root / "images" / "5.png", np.zeros((32, 40), np.uint8))
    bad["binary"] = imwrite(root / "masks" / "6_mask.png", np.array([[0, 1, 128, 255]] * 8, np.uint8))
    imwrite(root / "images" / "6.png", np.zeros((8, 4), np.uint8))
    bad["no mask"] = imwrite(root / "images" / "7.tif", np.zeros((8, 8), np.uint8))
    return bad


def test_bad_files_raise_naming_the_file(tmp_path):
    bad = _bad_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(bad["no mask"])):
        discover_mri_slices(tmp_path)
    bad["no mask"].unlink()
    recs = {r.id: r for r in discover_mri_slices(tmp_path).slices}
    for rid, kind, pattern in (("4", "truncated", "cannot decode"), ("5", "size", "30x40.*32x40"),
                               ("6", "binary", r"not binary.*\[0, 1, 128, 255\]")):
        with pytest.raises(MRIDataError, match=pattern) as err:
            read_slice(recs[rid])
        assert err.value.path == bad[kind] and str(bad[kind]) in str(err.value)
        with pytest.raises(ValueError, match=str(bad[kind])):
            MRISegmentationDataset([recs["1"], recs[rid]], size=16)
    lazy = MRISegmentationDataset(list(recs.values()), size=16, cache=False)
    assert lazy[0][0].shape == (1, 16, 16)
    with pytest.raises(MRIDataError, match=str(bad["truncated"])):
        lazy[3]
    batches = iter(torch.utils.data.DataLoader(lazy, batch_size=2, num_workers=1))  # the error crosses the worker
    assert next(batches)[0].shape == (2, 1, 16, 16)
    try:
        next(batches)
    except MRIDataError as err:
        assert str(bad["truncated"]) in str(err)
        err.__traceback__ = None  # else a reference cycle keeps the worker until gc, whose shutdown then takes 5 s
    else:
        raise AssertionError("no error")
    del batches


def test_skip_bad_files_counts(tmp_path):
    bad = _bad_folder(tmp_path)
    (tmp_path / "images" / "8.png").write_bytes(b"")  # empty file, with a mask
    imwrite(tmp_path / "masks" / "8_mask.png", square_mask((32, 40)))
    found = discover_mri_slices(tmp_path, skip_bad_files=True)
    assert found.skipped == [(bad["no mask"], found.skipped[0][1])] and "without a mask" in found.skipped[0][1]
    assert len(found.slices) == 7
    for cache in (True, False):
        ds = MRISegmentationDataset(found.slices, size=16, cache=cache, skip_bad_files=True)
        assert len(ds) == 3 and ds.ids == ["1", "2", "3"] and len(ds.skipped) == 4
        assert [p.name for p, _ in ds.skipped] == ["4.png", "5_mask.png", "6_mask.png", "8.png"]
        assert ds[2][0].shape == (1, 16, 16) and (ds.images is not None) == cache


def test_bad_lgg_mat_and_nifti_files(tmp_path):
    lgg = make_lgg(tmp_path / "l", patients=2, slices=2)
    (lgg / "kaggle_3m" / "TCGA_XX_9999_20000109").mkdir()  # an empty patient folder
    with pytest.raises(MRIDataError, match="TCGA_XX_9999_20000109.*without any image"):
        discover_mri_slices(lgg)
    assert len(discover_mri_slices(lgg, skip_bad_files=True).skipped) == 1

    mats = make_mat(tmp_path / "m", pids=("a", "b", "c"))
    (mats / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: PCWIN64" + bytes(200))
    write_mat(mats / "odd.mat", np.zeros((8, 8), np.int16), np.zeros((8, 6), np.uint8), "d")
    with pytest.raises(MRIDataError, match=r"odd\.mat.*8x6.*8x8|v5\.mat.*v7\.3"):
        discover_mri_slices(mats)
    found = discover_mri_slices(mats, skip_bad_files=True)
    assert len(found.slices) == 3 and sorted(p.name for p, _ in found.skipped) == ["odd.mat", "v5.mat"]
    write_mat(mats / "4.mat", np.zeros((8, 8), np.int16), np.full((8, 8), 3, np.uint8), "e")  # mask not binary
    rec = next(r for r in discover_mri_slices(mats, skip_bad_files=True).slices if r.id == "4")
    with pytest.raises(MRIDataError, match=r"4\.mat.*not binary"):
        read_slice(rec)

    brats = make_brats(tmp_path / "b", cases=3, shape=(64, 64, 8), tumour=(1,), brain=range(8))
    (brats / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz").unlink()
    flair = brats / "BraTS20_Training_003" / "BraTS20_Training_003_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:len(flair.read_bytes()) // 2])  # truncated (its header is intact)
    (brats / "BraTS20_Training_004").mkdir()  # an empty case folder
    with pytest.raises(MRIDataError, match="BraTS20_Training_002.*no seg"):
        discover_mri_slices(brats)
    found = discover_mri_slices(brats, skip_bad_files=True)
    assert found.patients == ["BraTS20_Training_001"] and len(found.skipped) == 3
    assert "empty case folder" in str(found.skipped)
    assert str(flair) in str(found.skipped) and "cannot read the NIfTI" in str(found.skipped)
    rec = discover_mri_slices(brats, source="brats", slice_rule="all", skip_bad_files=True)  # header only: passes
    bad = [r for r in rec.slices if r.patient == "BraTS20_Training_003"]
    with pytest.raises(MRIDataError, match=str(flair)):
        read_slice(bad[0])


# --- real data (skips when ../shared/data is absent) -------------------------------------------------


def test_real_lgg():
    root = SHARED_DATA / "brain-mri-lgg"
    if not (root / "kaggle_3m").is_dir():
        pytest.skip(f"real data not present at {root}")
    found = discover_mri_slices(root)
    assert found.source == "lgg" and len(found.patients) == 12 and len(found.slices) == 419 and not found.skipped
    ds = MRISegmentationDataset(found.slices, size=256, num_threads=2)
    empty = float((ds.masks.reshape(len(ds), -1).max(1) == 0).mean())
    assert 0.55 < empty < 0.75  # about two thirds of the masks are empty
    assert ds.images.max() == 255 and ds.images.min() == 0
    split = split_records(found.slices, 0.2, 0.2, seed=0)
    assert len(set(disjoint_patients(split))) == 12 and all(len(v) > 0 for v in split.values())
    assert read_slice(discover_mri_slices(root, channels="all").slices[0])[0].shape == (256, 256, 3)


def test_real_figshare_png():
    root = SHARED_DATA / "brain-mri-figshare"
    if not (root / "images").is_dir():
        pytest.skip(f"real data not present at {root}")
    found = discover_mri_slices(root)
    assert found.source == "folder" and len(found.slices) == 520
    assert len(found.patients) == 79  # from metadata.csv (README of ../shared/data)
    assert {s.attrs["tumour_type"] for s in found.slices} == {"meningioma", "glioma", "pituitary"}
    split = split_records(found.slices, 0.2, seed=0, block_size=20)  # patients, not blocks: block_size unused
    assert not {s.patient for s in split["train"]} & {s.patient for s in split["val"]}


def test_real_figshare_both_folders_share_patients():
    roots = [SHARED_DATA / "brain-mri-figshare", SHARED_DATA / "brain-mri-figshare-more"]
    if not all((r / "images").is_dir() for r in roots):
        pytest.skip(f"real data not present at {roots}")
    found = discover_folders(roots)
    assert len(found.slices) == 2372 and len(found.patients) <= 162
    split = split_records(found.slices, 0.2, seed=0)
    assert not {s.patient for s in split["train"]} & {s.patient for s in split["val"]}
