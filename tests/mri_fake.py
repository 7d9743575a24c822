"""Writers of the brain-MRI layouts in their real formats, for tests: PNG/TIFF folders (cv2),
Kaggle-LGG style 3-channel TIFFs in patient folders, figshare-style MATLAB v7.3 .mat files (h5py,
stored transposed as MATLAB does) and BraTS-style NIfTI volumes (nibabel)."""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")


# --- writers of the real formats -------------------------------------------------------------------


def imwrite(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def square_mask(shape, r0=4, r1=12, c0=6, c1=20) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[r0:r1, c0:c1] = 255
    return mask


def make_folder(root: Path, n=6, ext=".png", mask_ext=".png", size=(32, 40)) -> Path:
    for i in range(1, n + 1):
        img = np.full(size, 30 + i, np.uint8)
        imwrite(root / "images" / f"{i}{ext}", img)
        imwrite(root / "masks" / f"{i}_mask{mask_ext}", square_mask(size))
    return root


def make_lgg(root: Path, patients=4, slices=6, size=(32, 32)) -> Path:
    """kaggle_3m/<patient>/<patient>_<n>.tif (RGB = pre, FLAIR, post) + <patient>_<n>_mask.tif."""
    for p in range(patients):
        name = f"TCGA_XX_{1000 + p}_2000010{p}"
        for k in range(1, slices + 1):
            rgb = np.zeros((*size, 3), np.uint8)
            rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10 + p, 100 + k, 200  # pre, FLAIR, post
            imwrite(root / "kaggle_3m" / name / f"{name}_{k}.tif", rgb[..., ::-1])  # cv2 writes BGR arrays
            mask = square_mask(size) if k % 3 == 0 else np.zeros(size, np.uint8)  # 2/3 empty
            imwrite(root / "kaggle_3m" / name / f"{name}_{k}_mask.tif", mask)
    return root


def write_mat(path: Path, image: np.ndarray, mask: np.ndarray, pid: str, label: int = 1) -> Path:
    """A figshare-style MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, arrays stored transposed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for key, value, cls in (("image", image, "int16"), ("tumorMask", mask, "logical"),
                                ("PID", np.array([[ord(c) for c in pid]], np.uint16), "char"),
                                ("label", np.array([[float(label)]]), "double")):
            ds = g.create_dataset(key, data=np.ascontiguousarray(value.T))  # MATLAB is column-major
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    with open(path, "r+b") as fh:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        fh.write(text.ljust(116) + bytes(8) + b"\x00\x02IM")
    return path


def mat_image(h=40, w=56, seed=0):
    """int16 (H, W) scan with a bright corner block, and its {0, 1} mask of a non-square tumour."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w), np.int16)
    image[4:36, 4:52] = rng.integers(200, 1200, (32, 48))
    image[5, 50] = 30000  # one outlier pixel: clipped by the percentile scaling
    mask = np.zeros((h, w), np.uint8)
    mask[6:12, 30:46] = 1
    image[mask > 0] = 2000
    return image, mask


def make_mat(root: Path, pids=("MR1", "MR1", "MR1", "MR2", "MR2", "MR3", "MR3", "MR4")) -> Path:
    for i, pid in enumerate(pids, start=1):
        write_mat(root / f"part{(i - 1) // 4 + 1}" / f"{i}.mat", *mat_image(seed=i), pid)
    return root


def brain_box(shape, modality):
    """Each modality lights a different half of the brain box, so its slices can be told apart."""
    box = np.zeros(shape[:2], bool)
    r, c = shape[0] // 4, shape[1] // 4
    halves = {"flair": np.s_[r:3 * r, c:2 * c], "t1": np.s_[r:2 * r, c:3 * c], "t1ce": np.s_[2 * r:3 * r, c:3 * c],
              "t2": np.s_[r:3 * r, 2 * c:3 * c]}
    box[halves[modality]] = True
    return box


def lights(channel: np.ndarray, modality: str) -> bool:
    """The channel is lit exactly inside the modality's box (the darkest 0.5% of it clip to 0)."""
    box = brain_box(channel.shape, modality)
    return not (channel[~box] > 0).any() and (channel[box] > 0).mean() > 0.98


def make_brats(root: Path, cases=3, shape=(240, 240, 8), tumour=(3, 4), brain=range(1, 7), style="2020") -> Path:
    """<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz (BraTS 2020) or <case>/<case>-{t2f,...,seg}.nii.gz (2023)."""
    names = dict(zip(MODALITIES, ("t2f", "t1n", "t1c", "t2w"))) if style == "2023" else {m: m for m in MODALITIES}
    sep = "-" if style == "2023" else "_"
    rng = np.random.default_rng(0)
    for c in range(cases):
        case = f"BraTS-GLI-{c:05d}-000" if style == "2023" else f"BraTS20_Training_{c + 1:03d}"
        (root / case).mkdir(parents=True)
        for m in MODALITIES:
            vol = np.zeros(shape, np.float32)
            for k in brain:
                vol[..., k][brain_box(shape, m)] = rng.uniform(50, 900, int(brain_box(shape, m).sum()))
            nib.save(nib.Nifti1Image(vol, np.eye(4)), root / case / f"{case}{sep}{names[m]}.nii.gz")
        seg = np.zeros(shape, np.uint8)
        for k in tumour:
            seg[shape[0] // 3:shape[0] // 2, shape[1] // 3:shape[1] // 2, k] = (1, 2, 4)[k % 3]
        nib.save(nib.Nifti1Image(seg, np.eye(4)), root / case / f"{case}{sep}seg.nii.gz")
    return root


def disjoint_patients(split: dict) -> dict:
    """patient → the one split holding its slices; fails if a patient is in two splits."""
    seen = {}
    for name, recs in split.items():
        for r in recs:
            assert seen.setdefault(r.patient, name) == name, f"patient {r.patient} in {seen[r.patient]} and {name}"
    return seen


# --- the nnU-Net / Medical Segmentation Decathlon raw layout ----------------------------------------------

RAW_CHANNELS = ("FLAIR", "T1c")
RAW_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumour": 3, "enhancing_tumour": 4}
RAW_REGIONS = {"whole_tumour": [1, 2, 3, 4], "tumour_core": [1, 3, 4], "enhancing_tumour": [4]}
RAW_BRAIN = (np.s_[6:26], np.s_[6:26], range(1, 7))  # rows, cols, slices of the brain box (32x32x8)
RAW_TUMOUR = (3, 4)  # slices with tumour


def raw_label(shape=(32, 32, 8)) -> np.ndarray:
    """uint8 (X, Y, Z) labels 0..4, nested: edema around necrosis around non-enhancing around enhancing."""
    seg = np.zeros(shape, np.uint8)
    for k in RAW_TUMOUR:
        seg[10:20, 10:20, k] = 2
        seg[11:19, 11:19, k] = 1
        seg[12:17, 12:17, k] = 3
        seg[13:16, 13:16, k] = 4
    return seg


def raw_volumes(shape=(32, 32, 8), seed=0, background=(-3.0, 7.0)) -> tuple[list[np.ndarray], np.ndarray]:
    """float32 channel volumes (X, Y, Z) with a noisy brain box on a constant background per channel (as the
    real distributor-normalised data), the tumour brighter in FLAIR; and the brain (bool (X, Y, Z))."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    rows, cols, slices = RAW_BRAIN
    for k in slices:
        brain[rows, cols, k] = True
    seg = raw_label(shape)
    chans = []
    for c, bg in enumerate(background):
        vol = np.full(shape, bg, np.float32)
        vol[brain] = rng.normal(100.0 * (c + 1), 15.0 * (c + 1), int(brain.sum()))
        if c == 0:
            vol[seg > 0] += 80.0
        chans.append(vol)
    return chans, brain


def write_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def make_raw(root: Path, cases=3, shape=(32, 32, 8), spacing=(1.0, 1.2, 3.0), brain_masks=False, test_cases=0,
             prefix="case") -> Path:
    """dataset.json + imagesTr/<case>_000{0,1}.nii.gz + labelsTr/<case>.nii.gz (float32 labels 0..4, as the real
    data) [+ brainmasksTr/<case>.nii.gz] [+ imagesTs/<case>_000{0,1}.nii.gz]; cases <prefix>_001 ..."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    meta = {"name": "fake", "channel_names": {str(i): n for i, n in enumerate(RAW_CHANNELS)}, "labels": RAW_LABELS,
            "regions_brats": RAW_REGIONS, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    affine = np.diag([*spacing, 1.0])
    for i in range(cases + test_cases):
        split, case = ("Tr", f"{prefix}_{i + 1:03d}") if i < cases else ("Ts", f"{prefix}_t{i + 1:03d}")
        chans, brain = raw_volumes(shape, seed=i)
        for c, vol in enumerate(chans):
            write_nifti(root / f"images{split}" / f"{case}_{c:04d}.nii.gz", vol, affine)
        if split == "Tr":
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", raw_label(shape).astype(np.float32), affine)
            if brain_masks:
                write_nifti(root / "brainmasksTr" / f"{case}.nii.gz", brain.astype(np.uint8), affine)
    return root
