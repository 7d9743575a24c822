"""The nnU-Net / Decathlon raw layout (toolkit.data.mri.raw), label maps, per-volume z-score intensities
(toolkit.data.mri.nifti) and their on-device inverse (toolkit.data.batch_transforms.from_zscore_uint8).

Fake cases are written as real NIfTI files (tests/mri_fake.py ``make_raw``: 32x32x8, FLAIR + T1c, labels
0..4 nested, a constant non-zero background per channel); the last test reads the real
../shared/data/brats2013-multiclass when it is present.
"""
from __future__ import annotations

import json
import os
import pickle

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toolkit.data.batch_transforms import from_zscore_uint8  # noqa: E402
from toolkit.data.errors import MRIDataError  # noqa: E402
from toolkit.data.mri.dataset import MRISegmentationDataset  # noqa: E402
from toolkit.data.mri.discover import discover_mri_slices  # noqa: E402
from toolkit.data.mri.io import read_slice  # noqa: E402
from toolkit.data.mri.nifti import ZSCORE_CLIP, brain_region, zscore_uint8  # noqa: E402
from toolkit.data.mri.raw import raw_case_slices, raw_cases, read_dataset_json  # noqa: E402

from .mri_fake import (  # noqa: E402
    RAW_BRAIN, RAW_CHANNELS, RAW_LABELS, RAW_REGIONS, RAW_TUMOUR, make_folder, make_raw, raw_label, raw_volumes,
    write_nifti,
)
from .utils import SHARED_DATA  # noqa: E402

STEP = 2 * ZSCORE_CLIP / 255  # one uint8 step, in standard deviations


def _z(img: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) → float z (..., C, H, W) through the on-device preprocess."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(img, -1, -3)))
    return from_zscore_uint8(t if t.ndim == 4 else t[None]).numpy()


# --- reading back ----------------------------------------------------------------------------------------


def test_raw_layout_reads_back(tmp_path):
    root = make_raw(tmp_path / "raw", test_cases=1)
    found = discover_mri_slices(root)  # auto-detected; default: all channels, slices with brain
    assert found.source == "raw" and found.root == root and found.skipped == []
    assert found.patients == ["case_001", "case_002", "case_003"]  # imagesTs is not training data
    assert found.labels == RAW_LABELS and found.regions == RAW_REGIONS and found.intensity == "zscore"
    brain_slices = list(RAW_BRAIN[2])
    assert [s.index for s in found.slices if s.patient == "case_002"] == brain_slices
    s = found.slices[2]
    assert s.id == f"case_001_z{brain_slices[2]:03d}" and s.source == "raw" and s.patient == "case_001"
    assert s.channels == (0, 1) and read_dataset_json(root).channel_names == RAW_CHANNELS
    assert [p.name for p in s.channel_paths] == ["case_001_0000.nii.gz", "case_001_0001.nii.gz"]
    assert s.mask_path == root / "labelsTr" / "case_001.nii.gz" and s.brain_mask_path is None
    assert s.spacing == (1.0, 1.2, 3.0) and found.spacings == {p: (1.0, 1.2, 3.0) for p in found.patients}
    assert s.label_values == (0, 1, 2, 3, 4) and pickle.loads(pickle.dumps(s)) == s

    rec = next(r for r in found.slices if r.index == RAW_TUMOUR[0])
    img, mask = read_slice(rec)
    _, labels = read_slice(rec, labels=True)
    truth = raw_label()[:, :, rec.index]
    assert img.shape == (32, 32, 2) and img.dtype == np.uint8 and mask.dtype == labels.dtype == np.uint8
    assert np.array_equal(labels, truth) and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert np.array_equal(mask, (truth > 0).astype(np.uint8))
    chans, brain = raw_volumes(seed=0)
    inside = brain[:, :, rec.index]
    assert (img[~inside] == 0).all() and (img[inside] > 0).all()  # constant background -> 0 (z = -ZSCORE_CLIP)
    z = _z(img)[0]
    assert z[0][truth > 0].mean() > z[0][inside & (truth == 0)].mean() + 2  # the bright FLAIR tumour stays bright

    for choice, want in {"t1c": (1,), "FLAIR,T1C": (0, 1), (1, 0): (1, 0), "1": (1,), 2: (0, 1), 0: (0, 1),
                         "all": (0, 1)}.items():
        got = discover_mri_slices(root, channels=choice).slices[0]
        assert got.channels == want and len(got.channel_paths) == len(want), choice
    swapped = read_slice(discover_mri_slices(root, channels="t1c,flair").slices[2])[0]
    assert np.array_equal(swapped, read_slice(found.slices[2])[0][:, :, ::-1])
    for bad in ("t2", [0, 0], 3, "5"):
        with pytest.raises(ValueError, match="channel"):
            discover_mri_slices(root, channels=bad)

    ts = raw_cases(root, "Ts")
    assert [c.case for c in ts] == ["case_t004"] and ts[0].label is None and len(ts[0].channels) == 2
    to_predict = raw_case_slices(ts[0], read_dataset_json(root))  # every slice, no labels
    assert [r.index for r in to_predict] == list(range(8)) and to_predict[0].mask_path is None
    volumes: dict = {}
    img, mask = read_slice(to_predict[3], volumes)
    assert img.shape == (32, 32, 2) and not mask.any() and img[raw_volumes(seed=3)[1][:, :, 3]].min() > 0
    with pytest.raises(ValueError, match="needs labels"):
        raw_case_slices(ts[0], read_dataset_json(root), slice_rule="tumour")
    tr = raw_cases(root)
    assert [c.case for c in tr] == found.patients and all(c.label is not None for c in tr)


def test_raw_slice_rules(tmp_path):
    root = make_raw(tmp_path, cases=2)
    counts = {"all": 8, "nonempty": len(RAW_BRAIN[2]), "tumour": len(RAW_TUMOUR), "tumour+2": len(RAW_TUMOUR) + 2}
    for rule, n in counts.items():
        assert len(discover_mri_slices(root, slice_rule=rule).slices) == 2 * n, rule
    assert [s.index for s in discover_mri_slices(root, slice_rule="tumour").slices[:2]] == list(RAW_TUMOUR)


def test_zscore_over_the_brain(tmp_path):
    root = make_raw(tmp_path, cases=2)
    found = discover_mri_slices(root, slice_rule="all")
    ds = MRISegmentationDataset(found.slices, size=32, num_threads=1)
    chans, brain = raw_volumes(seed=1)  # the second case
    own = [i for i, r in enumerate(ds.records) if r.patient == "case_002"]
    z = _z(ds.images[own])  # (Z, C, H, W)
    inside = np.moveaxis(brain, 2, 0)  # (Z, H, W)
    for c in range(2):
        zc = z[:, c][inside]
        assert abs(zc.mean()) < STEP and abs(zc.std() - 1) < 0.01, c
        assert (z[:, c][~inside] == -ZSCORE_CLIP).all()
        original = np.moveaxis(chans[c], 2, 0)[inside]
        expect = np.clip((original - original.mean()) / original.std(), -ZSCORE_CLIP, ZSCORE_CLIP)
        assert np.abs(zc - expect).max() <= STEP / 2 + 1e-4  # only the uint8 rounding is lost


def test_brain_mask_drives_the_statistics(tmp_path):
    root = make_raw(tmp_path, cases=1, brain_masks=True)
    half = np.zeros((32, 32, 8), np.uint8)
    half[6:16, 6:26, 1:7] = 1  # a brain mask covering half of the lit box
    write_nifti(root / "brainmasksTr" / "case_001.nii.gz", half, np.diag([1.0, 1.2, 3.0, 1.0]))
    found = discover_mri_slices(root, slice_rule="all")
    assert found.slices[0].brain_mask_path == root / "brainmasksTr" / "case_001.nii.gz"
    ds = MRISegmentationDataset(found.slices, size=32)
    z = _z(ds.images)  # (Z, C, H, W)
    inside = np.moveaxis(half, 2, 0) > 0
    lit_outside = np.moveaxis(raw_volumes(seed=0)[1], 2, 0) & ~inside
    assert (z[:, 0][lit_outside] == -ZSCORE_CLIP).all()  # outside the mask, however bright
    assert abs(z[:, 1][inside].mean()) < STEP and abs(z[:, 1][inside].std() - 1) < 0.01
    half[:, :, 1] = 0  # slice 1 has no brain in the mask: the default rule drops it
    write_nifti(root / "brainmasksTr" / "case_001.nii.gz", half, np.diag([1.0, 1.2, 3.0, 1.0]))
    assert [s.index for s in discover_mri_slices(root).slices] == [2, 3, 4, 5, 6]


def test_dataset_labels_and_volumes_read_once(tmp_path, monkeypatch):
    from toolkit.data.mri import nifti

    root = make_raw(tmp_path, cases=2, brain_masks=True)
    recs = discover_mri_slices(root, slice_rule="tumour").slices
    loads = []
    real = nifti.load_nifti
    monkeypatch.setattr(nifti, "load_nifti", lambda p, data=True: loads.append(p) or real(p, data))
    binary = MRISegmentationDataset(recs, size=16, num_threads=2)
    assert len(loads) == 2 * 4  # per case: 2 channels, label, brain mask, each once
    labelled = MRISegmentationDataset(recs, size=16, labels=True, num_threads=1)
    assert set(np.unique(binary.masks)) == {0, 1} and set(np.unique(labelled.masks)) == {0, 1, 2, 3, 4}
    assert np.array_equal(labelled.masks > 0, binary.masks > 0) and np.array_equal(labelled.images, binary.images)
    lazy = MRISegmentationDataset(recs, size=16, labels=True, cache=False)
    assert torch.equal(lazy[1][1], labelled[1][1]) and lazy[1][1].max() == 4
    two_d = MRISegmentationDataset(discover_mri_slices(make_folder(tmp_path / "f", n=2)).slices, size=16, labels=True)
    assert set(np.unique(two_d.masks)) == {0, 1}  # 2D masks stay binary


def test_from_zscore_uint8():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    z = from_zscore_uint8(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    assert z.flatten()[0] == -ZSCORE_CLIP and z.flatten()[-1] == pytest.approx(ZSCORE_CLIP)
    assert torch.allclose(z.flatten().diff(), torch.full((255,), STEP), atol=1e-5)
    values = np.random.default_rng(0).normal(5.0, 3.0, (8, 8, 4)).astype(np.float32)
    u = zscore_uint8(values, np.ones(values.shape, bool))
    back = from_zscore_uint8(torch.from_numpy(u).permute(2, 0, 1)[None]).numpy()[0].transpose(1, 2, 0)
    expect = np.clip((values - values.mean()) / values.std(), -ZSCORE_CLIP, ZSCORE_CLIP)
    assert np.abs(back - expect).max() <= STEP / 2 + 1e-4
    with pytest.raises(TypeError, match="uint8"):
        from_zscore_uint8(x.float())


# --- bad input ----------------------------------------------------------------------------------------


def _spoil(root, kind):
    """Spoil case_002 of a fake raw folder; returns (the file the error must name, pattern of the message)."""
    img0, img1 = root / "imagesTr" / "case_002_0000.nii.gz", root / "imagesTr" / "case_002_0001.nii.gz"
    label, aff = root / "labelsTr" / "case_002.nii.gz", np.diag([1.0, 1.2, 3.0, 1.0])
    if kind == "missing channel":
        img1.unlink()
        return img1, "channel file missing for case case_002"
    if kind == "missing label":
        label.unlink()
        return label, "label file missing"
    if kind == "label shape":
        write_nifti(label, np.zeros((32, 30, 8), np.float32), aff)
        return label, r"shape \(32, 30, 8\).*\(32, 32, 8\)"
    if kind == "channel shape":
        write_nifti(img1, np.zeros((32, 32, 7), np.float32), aff)
        return img1, r"shape \(32, 32, 7\)"
    if kind == "non-finite affine":
        bad = aff.copy()
        bad[0, 3] = np.nan
        write_nifti(img0, raw_volumes(seed=1)[0][0], bad)
        return img0, "bad affine"
    if kind == "singular affine":  # nibabel cannot build a qform from it: store it as the sform only
        img = nib.Nifti1Image(raw_volumes(seed=1)[0][1], None)
        img.set_sform(np.diag([1.0, 0.0, 3.0, 1.0]), code=2)
        nib.save(img, str(img1))
        return img1, "bad affine"
    if kind == "affines differ":
        write_nifti(label, raw_label().astype(np.float32), np.diag([1.0, 1.2, 3.1, 1.0]))
        return label, "affine differs.*0.1"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing channel", "missing label", "label shape", "channel shape",
                                  "non-finite affine", "singular affine", "affines differ"])
def test_bad_case_files(tmp_path, kind):
    root = make_raw(tmp_path, cases=3)
    bad, pattern = _spoil(root, kind)
    with pytest.raises(MRIDataError, match=pattern) as err:
        discover_mri_slices(root)
    assert err.value.path == bad and str(bad) in str(err.value)
    found = discover_mri_slices(root, skip_bad_files=True)
    assert found.patients == ["case_001", "case_003"] and [p for p, _ in found.skipped] == [bad]


def test_undeclared_label_values_refused_when_read(tmp_path):
    root = make_raw(tmp_path, cases=2)
    seg = raw_label()
    seg[0, 0, 0], seg[1, 1, 5] = 7, 5
    label = write_nifti(root / "labelsTr" / "case_002.nii.gz", seg, np.diag([1.0, 1.2, 3.0, 1.0]))
    recs = discover_mri_slices(root).slices  # headers only: found
    bad = [r for r in recs if r.patient == "case_002"]
    with pytest.raises(MRIDataError, match=r"label values \[5, 7\].*declared: \[0, 1, 2, 3, 4\]") as err:
        read_slice(bad[0])
    assert err.value.path == label
    ds = MRISegmentationDataset(recs, size=16, skip_bad_files=True)
    assert {r.patient for r in ds.records} == {"case_001"} and {p for p, _ in ds.skipped} == {label}
    write_nifti(label, raw_label().astype(np.float32) + 0.5, np.diag([1.0, 1.2, 3.0, 1.0]))
    with pytest.raises(MRIDataError, match="non-integer"):
        read_slice(bad[0])


@pytest.mark.parametrize("change, field", [
    (lambda m: "{not json", "JSON"),
    (lambda m: [1, 2], "JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "channel_names"}, "'channel_names'"),
    (lambda m: {**m, "channel_names": {"0": "FLAIR", "2": "T1c"}}, "'channel_names'"),
    (lambda m: {k: v for k, v in m.items() if k != "labels"}, "'labels'"),
    (lambda m: {**m, "labels": {"background": 0, "tumour": "1"}}, "'labels'.*'tumour': '1'"),
    (lambda m: {**m, "labels": {"background": 0, "whole": [1, 2]}}, "'labels'.*regions"),
    (lambda m: {**m, "labels": {"background": 0, "tumour": 1.5}}, "'labels'"),
    (lambda m: {**m, "regions_brats": {"whole": [1, 9]}}, "'regions_brats'"),
    (lambda m: {**m, "regions_brats": {"whole": [0, 1, 2]}}, "'regions_brats'.*foreground.*not the background"),
    (lambda m: {**m, "labels": {"tumour": 1, "edema": 2}}, "'labels' must declare the background, value 0"),
    (lambda m: {**m, "file_ending": ".png"}, "'file_ending'"),
])
def test_bad_dataset_json(tmp_path, change, field):
    root = make_raw(tmp_path, cases=1)
    path = root / "dataset.json"
    new = change(json.loads(path.read_text()))
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    for call in (lambda: discover_mri_slices(root), lambda: discover_mri_slices(root, skip_bad_files=True),
                 lambda: read_dataset_json(root)):
        with pytest.raises(MRIDataError, match=field) as err:
            call()
        assert err.value.path == path


def test_dataset_json_with_a_byte_order_mark_is_read(tmp_path):
    """As metadata.csv: a UTF-8 byte-order mark (Windows editors write one) was 'cannot read it as JSON'."""
    root = make_raw(tmp_path, cases=1)
    path = root / "dataset.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_dataset_json(root).channel_names == RAW_CHANNELS


def test_undeclared_channel_file(tmp_path):
    root = make_raw(tmp_path, cases=2)
    extra = write_nifti(root / "imagesTr" / "case_001_0002.nii.gz", raw_volumes()[0][0], np.diag([1.0, 1.2, 3.0, 1.0]))
    with pytest.raises(MRIDataError, match="channel 0002 is not declared") as err:
        discover_mri_slices(root)
    assert err.value.path == extra


# --- real data (skips when ../shared/data is absent) ---------------------------------------------------


def test_real_brats2013_multiclass():
    root = SHARED_DATA / "brats2013-multiclass"
    if not (root / "dataset.json").is_file():
        pytest.skip(f"real data not present at {root}")
    found = discover_mri_slices(root)
    assert found.source == "raw" and len(found.patients) == 4 and not found.skipped
    assert found.labels == {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumour": 3,
                            "enhancing_tumour": 4}
    assert found.regions["whole_tumour"] == [1, 2, 3, 4] and found.intensity == "zscore"
    assert set(found.spacings.values()) == {(1.0, 1.0, 1.0)}
    case = found.patients[0]
    recs = [s for s in found.slices if s.patient == case]
    assert all(s.num_channels == 2 and s.brain_mask_path is not None for s in recs) and 50 < len(recs) <= 155
    ds = MRISegmentationDataset(recs, size=240, labels=True, num_threads=1)
    brain = np.asarray(nib.load(str(recs[0].brain_mask_path)).dataobj) > 0  # (X, Y, Z)
    inside = np.moveaxis(brain[:, :, [s.index for s in recs]], 2, 0)  # (N, H, W) of the kept slices
    assert inside.sum() == brain.sum()  # every brain voxel lies in a kept slice
    z = _z(ds.images)
    for c in range(2):
        zc = z[:, c][inside]
        assert abs(zc.mean()) < 0.05 and abs(zc.std() - 1) < 0.05, (c, zc.mean(), zc.std())
        assert (z[:, c][~inside] == -ZSCORE_CLIP).all()
    assert set(np.unique(ds.masks)) == {0, 1, 2, 3, 4}
    assert not (ds.masks[~inside] > 0).any()  # tumour lies in the brain
    flair = np.asarray(nib.load(str(recs[0].channel_paths[0])).dataobj)
    assert np.array_equal(brain_region(flair), brain)  # without brainmasksTr the background rule finds the same brain


@pytest.mark.parametrize("layout", ["raw", "brats"])
def test_spacing_follows_the_affine_not_a_stale_pixdim(tmp_path, layout):
    """Volumes whose sform says 1 x 1.2 x 3 mm while the header's pixdim says 1 x 1 x 1 (a stale pixdim beside an
    updated sform; viewers and ITK place the voxels by the affine): the spacing came from pixdim, so evaluate's
    HD95 and volumes were 3.6 times too small in ml; now it is the affine's column lengths, also rotated."""
    from .mri_fake import make_brats

    d = tmp_path / "d"
    root = make_raw(d, cases=1) if layout == "raw" else make_brats(d, cases=1, shape=(32, 32, 8))
    affine = np.array([[0, -1.2, 0, 30], [1.0, 0, 0, -4], [0, 0, 3.0, 2], [0, 0, 0, 1]])  # X, Y swapped, Y flipped
    for path in root.rglob("*.nii.gz"):
        img = nib.load(str(path))
        out = nib.Nifti1Image(np.asarray(img.dataobj), affine)
        out.header.set_qform(affine, code=0)
        out.header.set_sform(affine, code=2)
        out.header["pixdim"][1:4] = 1.0  # stale
        nib.save(out, str(path))
    assert nib.load(str(next(root.rglob("*.nii.gz")))).header.get_zooms() == (1.0, 1.0, 1.0)
    assert {s.spacing for s in discover_mri_slices(root).slices} == {(1.0, 1.2, 3.0)}


def test_a_brats_case_whose_volumes_lie_on_other_grids_is_refused(tmp_path):
    """BraTS case folders checked shapes only: a modality on another voxel grid (shifted 5 mm) was read voxel for
    voxel with the others; now, as the raw layout, an error names that file (left out with --skip-bad-files)."""
    from .mri_fake import make_brats

    root = make_brats(tmp_path / "d", cases=2, shape=(32, 32, 8))
    t1 = next(root.glob("*/*_t1.nii.gz"))
    img = nib.load(str(t1))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3)), str(t1))
    with pytest.raises(MRIDataError, match="_t1.nii.gz: affine differs from that of .*_flair") as err:
        discover_mri_slices(root, channels=0)
    assert err.value.path == t1
    found = discover_mri_slices(root, channels=0, skip_bad_files=True)
    assert {s.patient for s in found.slices} == {p.name for p in root.iterdir()} - {t1.parent.name}
    assert discover_mri_slices(root).slices  # FLAIR alone: the T1 file is not read
