"""Fuzz the data readers: malformed files dropped into every data source.

Each case must end in a clear error naming the bad file, or, with ``skip_bad_files``, in
the file being left out and counted; never a hang (each case runs under a 60 s alarm),
never a silent wrong result (the good slices still load, the bad one does not).
"""

from __future__ import annotations

import gzip
import signal
import struct
import zlib
from pathlib import Path

import cv2
import h5py
import nibabel as nib
import numpy as np
import pytest

from toolkit.data.mnist import load_mnist
from toolkit.data.mri.dataset import MRISegmentationDataset
from toolkit.data.mri.discover import discover_mri_slices

from .mri_fake import imwrite, make_brats, make_folder, make_lgg, make_mat, square_mask, write_mat

HUGE = 100_000  # declared width and height of the "enormous declared size" files (10^10 pixels)


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a case that takes over 60 s instead of letting it hang the suite."""
    def timeout(*_):
        raise TimeoutError("a reader hung on a malformed file")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height grey pixels, followed by a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_declaring(width: int, height: int, channels: int = 1, data: int = 16) -> bytes:
    """A little-endian TIFF whose IFD declares width x height 8-bit pixels of ``channels`` samples
    (no compression) followed by ``data`` zero bytes."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, channels), (278, 4, height), (279, 4, data)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(data)


def random_bytes(n=3000, seed=0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --- the malformed 2D files (PNG folder, LGG TIFF): (kind, which file, how to spoil it) -------------------
def _spoil_2d(kind: str, image: Path, mask: Path, ext: str) -> Path:
    shape = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
    if kind == "empty file":
        image.write_bytes(b"")
    elif kind == "truncated":
        image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    elif kind == "random bytes":
        image.write_bytes(random_bytes())
    elif kind == "enormous declared size":
        image.write_bytes(png_declaring(HUGE, HUGE) if ext == ".png" else tiff_declaring(HUGE, HUGE))
    elif kind == "mask of the wrong size":
        imwrite(mask, square_mask((shape[0] + 3, shape[1])))
        return mask
    elif kind == "mask not binary":
        m = square_mask(shape)
        m[0, :4] = (1, 77, 128, 200)
        imwrite(mask, m)
        return mask
    elif kind == "wrong channel count":  # 5 samples per pixel: neither grey, RGB nor RGBA
        image.write_bytes(tiff_declaring(shape[1], shape[0], channels=5, data=shape[0] * shape[1] * 5))
    elif kind == "NaN pixels in a float TIFF":
        assert ext == ".tif"
        img = np.full((*shape, 3), 50.0, np.float32)
        img[3, 4] = np.nan
        imwrite(image, img)
    elif kind == "empty mask file":
        mask.write_bytes(b"")
        return mask
    elif kind.startswith("broken link"):  # a link whose target is gone: was left out unsaid (images)
        spoiled = mask if kind == "broken link as mask" else image
        spoiled.unlink()
        spoiled.symlink_to(spoiled.parent / "gone.bin")
        return spoiled
    return image


KINDS_2D = ["empty file", "truncated", "random bytes", "enormous declared size", "mask of the wrong size",
            "mask not binary", "empty mask file", "broken link as image", "broken link as mask"]


def _check(root: Path, bad: Path, n_good: int, channels=None):
    """Strict: an error naming ``bad``. Skip: ``bad`` left out and counted, the others load."""
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        found = discover_mri_slices(root, channels=channels)
        MRISegmentationDataset(found.slices, size=16)
    assert str(bad) in str(err.value)
    found = discover_mri_slices(root, channels=channels, skip_bad_files=True)
    ds = MRISegmentationDataset(found.slices, size=16, skip_bad_files=True)
    skipped = found.skipped + ds.skipped
    assert len(ds) == n_good and len(skipped) == 1 and Path(skipped[0][0]) == bad, skipped
    images, masks = zip(*(ds[i] for i in range(len(ds))))
    assert all(m.max() <= 1 for m in masks) and all(i.shape == images[0].shape for i in images)


@pytest.mark.parametrize("kind", KINDS_2D)
def test_png_folder(tmp_path, kind):
    make_folder(tmp_path, n=4)
    bad = _spoil_2d(kind, tmp_path / "images" / "2.png", tmp_path / "masks" / "2_mask.png", ".png")
    _check(tmp_path, bad, 3)


@pytest.mark.parametrize("kind", [*KINDS_2D, "wrong channel count", "NaN pixels in a float TIFF"])
def test_lgg_tiff(tmp_path, kind):
    make_lgg(tmp_path, patients=2, slices=2)
    d = tmp_path / "kaggle_3m" / "TCGA_XX_1001_20000101"
    bad = _spoil_2d(kind, d / f"{d.name}_2.tif", d / f"{d.name}_2_mask.tif", ".tif")
    _check(tmp_path, bad, 3, channels="all")


def _spoil_mat(kind: str, path: Path) -> None:
    good = path.read_bytes()
    image = np.full((40, 56), 300, np.int16)
    mask = np.zeros((40, 56), np.uint8)
    mask[5:9, 5:9] = 1
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random bytes":
        path.write_bytes(random_bytes())
    elif kind == "mask of the wrong size":
        write_mat(path, image, mask[:, :50], "MR9")
    elif kind == "mask not binary":
        write_mat(path, image, mask * 3, "MR9")
    elif kind == "wrong channel count":
        write_mat(path, np.stack([image] * 3, axis=2), np.stack([mask] * 3, axis=2), "MR9")
    elif kind == "NaN pixels in a float image":
        f_image = image.astype(np.float32)
        f_image[2, 2] = np.nan
        write_mat(path, f_image, mask, "MR9")
    elif kind == "enormous declared size":
        write_mat(path, image, mask, "MR9")
        with h5py.File(path, "r+") as f:  # HDF5 allocates lazily: the file stays small
            del f["cjdata/image"], f["cjdata/tumorMask"]
            f["cjdata"].create_dataset("image", shape=(HUGE, HUGE), dtype=np.int16)
            f["cjdata"].create_dataset("tumorMask", shape=(HUGE, HUGE), dtype=np.uint8)
    elif kind.startswith("PID of") or kind == "image a group":  # were bare TypeError/ValueError/AttributeError
        pid = {"PID of floats": np.array([[77.0, 82.0]]), "PID of bytes": np.bytes_("MR9"),
               "PID of negative codes": np.array([[-5]], np.int64)}.get(kind)
        with h5py.File(path, "r+") as f:
            key = "PID" if pid is not None else "image"
            del f["cjdata"][key]
            f["cjdata"].create_dataset(key, data=pid) if pid is not None else f["cjdata"].create_group(key)


@pytest.mark.parametrize("kind", ["empty file", "truncated", "random bytes", "mask of the wrong size",
                                  "mask not binary", "wrong channel count", "NaN pixels in a float image",
                                  "enormous declared size", "PID of floats", "PID of bytes",
                                  "PID of negative codes", "image a group"])
def test_figshare_mat(tmp_path, kind):
    make_mat(tmp_path, pids=("MR1", "MR1", "MR2", "MR3"))
    bad = tmp_path / "part1" / "3.mat"
    _spoil_mat(kind, bad)
    _check(tmp_path, bad, 3)


def _spoil_nifti(kind: str, case: Path) -> Path:
    flair, seg = case / f"{case.name}_flair.nii.gz", case / f"{case.name}_seg.nii.gz"
    shape = nib.load(str(flair)).shape
    if kind == "empty file":
        flair.write_bytes(b"")
    elif kind == "truncated":
        flair.write_bytes(flair.read_bytes()[: len(flair.read_bytes()) // 2])
    elif kind == "random bytes":
        flair.write_bytes(random_bytes())
    elif kind == "volumes of different sizes":
        nib.save(nib.Nifti1Image(np.zeros((shape[0] - 4, *shape[1:]), np.uint8), np.eye(4)), seg)
        return seg
    elif kind == "non-integer labels":
        labels = np.zeros(shape, np.float32)
        labels[20:30, 20:30, :] = 1.5
        nib.save(nib.Nifti1Image(labels, np.eye(4)), seg)
        return seg
    elif kind == "wrong channel count":
        nib.save(nib.Nifti1Image(np.ones((*shape, 2), np.float32), np.eye(4)), flair)
    elif kind == "NaN voxels in a float volume":
        vol = np.asarray(nib.load(str(flair)).dataobj).copy()
        vol[10, 10, :] = np.nan
        nib.save(nib.Nifti1Image(vol, np.eye(4)), flair)
    elif kind == "enormous declared size":
        header = nib.Nifti1Header()
        header.set_data_shape((30_000, 30_000, 1000))  # the int16 dim fields allow up to 32,767
        header.set_data_dtype(np.float32)
        flair.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(64)))
    return flair


@pytest.mark.parametrize("kind", ["empty file", "truncated", "random bytes", "volumes of different sizes",
                                  "non-integer labels", "wrong channel count", "NaN voxels in a float volume",
                                  "enormous declared size"])
def test_brats_nifti(tmp_path, kind):
    make_brats(tmp_path, cases=2, shape=(48, 48, 4), tumour=(1, 2), brain=range(4))
    bad = _spoil_nifti(kind, tmp_path / "BraTS20_Training_002")
    with pytest.raises(ValueError) as err:
        found = discover_mri_slices(tmp_path, slice_rule="all")
        MRISegmentationDataset(found.slices, size=16)
    assert str(bad) in str(err.value)
    found = discover_mri_slices(tmp_path, slice_rule="all", skip_bad_files=True)
    ds = MRISegmentationDataset(found.slices, size=16, skip_bad_files=True)
    skipped = found.skipped + ds.skipped
    assert len(ds) + len(ds.skipped) == len(found.slices) and {Path(p) for p, _ in skipped} == {bad}
    assert len(ds) == 4  # the 4 slices of the good case
    assert all(ds[i][1].max() <= 1 for i in range(len(ds)))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("kind", ["empty file", "truncated", "random bytes", "wrong sizes", "enormous declared size",
                                  "images and labels disagree"])
def test_mnist_idx(tmp_path, kind):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(10))
    images, labels = raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"
    bad = images
    if kind == "empty file":
        images.write_bytes(b"")
    elif kind == "truncated":
        images.write_bytes(images.read_bytes()[:-20])
    elif kind == "random bytes":
        images.write_bytes(random_bytes())
    elif kind == "wrong sizes":
        _write_idx(images, np.zeros((10, 27, 27)))
        bad = raw  # the message names the folder holding both files, with both shapes
    elif kind == "enormous declared size":
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2**32 - 1, 2**32 - 1, 2**32 - 1))
        images.write_bytes(gzip.compress(header + bytes(100)))
    elif kind == "images and labels disagree":
        _write_idx(labels, np.zeros(9))
        bad = raw
    with pytest.raises(ValueError, match=str(bad)):
        load_mnist(tmp_path, train=False)


@pytest.mark.parametrize("kind", ["empty file", "truncated", "random bytes", "wrong sizes", "enormous declared size"])
def test_cifar_class_folders(tmp_path, kind):
    from toolkit.data.cifar import read_class_folders

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(2):
                imwrite(tmp_path / split / cls / f"{i}.png", np.full((32, 32, 3), 60 + i, np.uint8))
    bad = tmp_path / "train" / "dog" / "1.png"
    good = bad.read_bytes()
    spoiled = {"empty file": b"", "truncated": good[: len(good) // 2], "random bytes": random_bytes(),
               "enormous declared size": png_declaring(HUGE, HUGE)}
    if kind == "wrong sizes":
        imwrite(bad, np.zeros((33, 32, 3), np.uint8))
    else:
        bad.write_bytes(spoiled[kind])
    with pytest.raises(ValueError, match=str(bad)):
        read_class_folders(tmp_path, "train", use_cache=False)
