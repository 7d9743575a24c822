"""Reading brain-MRI slices: the :class:`MRISlice` record, :func:`read_slice` for every source,
:func:`read_image` for 2D files, and the low-level reader of .mat files (:func:`open_figshare_mat`);
NIfTI volumes are :mod:`toolkit.data.mri.nifti` (:func:`load_nifti` is re-exported here). Which
slices exist is :mod:`toolkit.data.mri.discover`'s job.

Intensities: uint8 images are kept. Other 2D dtypes (int16 .mat, 16-bit or float PNG/TIFF) are
scaled per slice and per channel by :func:`to_uint8`: clipped to the 0.5th..99.5th percentile of the
slice's nonzero pixels (so the black background does not count), then mapped linearly to 0..255.
NIfTI volumes (brats, raw) are z-scored per volume over the brain and stored as uint8
(:mod:`toolkit.data.mri.nifti`; undo with :func:`toolkit.data.batch_transforms.from_zscore_uint8`).

Masks: 2D mask files must hold only {0, 255} or {0, 1} (16-bit: {0, 65535}) — JPEG masks, being
lossy, are thresholded at 128 instead; .mat ``tumorMask`` likewise; NIfTI label maps count
label > 0 as tumour, or give their label values with ``read_slice(..., labels=True)``. Every problem
with a file raises :class:`MRIDataError` naming the file; that includes float pixels that are NaN
or infinite (refused, never turned into 0 silently) and headers declaring more than
:data:`MAX_PIXELS` pixels (2D) or :data:`MAX_VOXELS` voxels (NIfTI), which are refused before
anything is decoded or allocated.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import MRIDataError
from . import nifti
from .nifti import MAX_VOXELS, NIFTI_SOURCES, load_nifti

__all__ = ["CHANNEL_NAMES", "IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_VOXELS", "MRISlice", "load_nifti", "natural_key",
           "figshare_patient", "open_figshare_mat", "read_image", "read_slice", "to_uint8"]

#: File extensions recognised as 2D images or masks (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Channel names per source, in index order (``MRISlice.channels`` indexes these).
CHANNEL_NAMES = {"folder": ("red", "green", "blue"), "lgg": ("pre", "flair", "post"),
                 "figshare_mat": ("t1ce",), "brats": ("flair", "t1", "t1ce", "t2")}
#: Largest 2D image (H x W pixels) a reader accepts: a header declaring more is refused before decoding.
MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class MRISlice:
    """One 2D slice and its mask, as a small picklable record (no pixels; read with :func:`read_slice`).

    Attributes:
        id: unique in its data set, stable across runs (what split files store), e.g. "17",
            "TCGA_CS_4941_19960909_12", "BraTS20_Training_001_z077".
        patient: patient id where the layout gives one (LGG folder, .mat PID, BraTS case), else None.
        source: "folder", "lgg", "figshare_mat", "brats" or "raw" (nnU-Net layout).
        image_path: the image file (NIfTI: the volume of the first channel).
        mask_path: the mask file (.mat: the same file as the image; NIfTI: the label volume; None only for a
            raw case to predict, see :func:`~toolkit.data.mri.raw.raw_case_slices`).
        index: the slice's index along the volume's last axis (NIfTI), None for 2D files.
        channels: indices into ``CHANNEL_NAMES[source]`` (raw: into dataset.json ``channel_names``), the
            image channels read in this order; () = one grey channel (folder only).
        channel_paths: NIfTI: one volume per entry of ``channels``; () otherwise.
        attributes: (column, value) pairs from the folder's ``metadata.csv`` other than the patient
            (e.g. ``("tumour_type", "glioma")``); () when there is none. :attr:`attrs` gives them as a dict.
        spacing: NIfTI: the voxel size in mm along (X, Y, Z) = (H, W, slice), the lengths of the affine's columns
            (:func:`~toolkit.data.mri.nifti.voxel_spacing`, rounded to 6 decimals); None for 2D.
        brain_mask_path: raw: the case's ``brainmasksTr/<case>`` volume when there is one, else None.
        label_values: raw: the label values dataset.json declares (others are refused when read); () = unchecked.
    """

    id: str
    patient: str | None
    source: str
    image_path: Path
    mask_path: Path
    index: int | None = None
    channels: tuple[int, ...] = ()
    channel_paths: tuple[Path, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    spacing: tuple[float, float, float] | None = None
    brain_mask_path: Path | None = None
    label_values: tuple[int, ...] = ()

    @property
    def attrs(self) -> dict[str, str]:
        """The metadata attributes as a dict (empty when the layout has none)."""
        return dict(self.attributes)

    @property
    def num_channels(self) -> int:
        """Channels of the image that :func:`read_slice` returns (C of (H, W, C))."""
        return max(1, len(self.channels))


def natural_key(text: str) -> tuple:
    """Sort key ordering embedded numbers numerically: "2" < "10", "a9" < "a10"."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower()) for tok in re.split(r"(\d+)", text) if tok)


# --- reading pixels ------------------------------------------------------------------------------


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale a slice (H, W) of any real dtype to uint8 0..255; uint8 input is returned as is.

    Values are clipped to the 0.5th..99.5th percentile of the nonzero pixels, then mapped
    linearly to 0..255; NaN/inf count as 0, an all-zero slice gives zeros, a slice with one
    nonzero value v gives v → 255 and 0 → 0.
    """
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    nonzero = a[a != 0]
    if nonzero.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(nonzero, (0.5, 99.5)))
    if hi <= lo:  # one value v: v → 255 and 0 → 0 (v > 0)
        lo, hi = (0.0, hi) if hi > 0 else (lo, lo + 1.0)
    return np.rint(np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_declared_size(data: np.ndarray, path: Path) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS` pixels (read from the header only)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data.tobytes())) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        width = height = MAX_PIXELS  # over PIL's own limit: certainly over ours
    except Exception:  # noqa: BLE001 - PIL cannot parse the header: OpenCV's decoder reports the problem
        return
    if width * height > MAX_PIXELS:
        raise MRIDataError(path, f"its header declares {width}x{height} pixels, over the limit of {MAX_PIXELS:,} "
                                 f"(toolkit.data.mri.io.MAX_PIXELS); corrupt or not an MRI slice")


def _decode(path: Path) -> np.ndarray:
    """Decode a PNG/JPEG/TIFF at its own depth: (H, W) or (H, W, 3) in file (RGB) order.

    Refuses (MRIDataError naming the file) an unreadable file, a header declaring over
    :data:`MAX_PIXELS` pixels, a channel count other than 1, 3 or 4, and float pixels that
    are NaN or infinite.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        gone = f"a link to {os.readlink(path)}, which does not exist" if path.is_symlink() else err
        raise MRIDataError(path, f"cannot read the file: {gone}") from err
    if data.size:
        _check_declared_size(data, path)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as err:
        raise MRIDataError(path, f"cannot decode it: {str(err).strip().splitlines()[-1]}") from err
    if img is None:
        raise MRIDataError(path, "cannot decode it: not a readable PNG/JPEG/TIFF image (empty, truncated or corrupt?)")
    if img.ndim == 3:
        if img.shape[2] not in (1, 3, 4):
            raise MRIDataError(path, f"image with {img.shape[2]} channels; expected grey, RGB or RGBA")
        code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = img[:, :, 0] if img.shape[2] == 1 else cv2.cvtColor(img, code)
    _check_finite(img, path)
    return img


def _check_finite(a: np.ndarray, path: Path, where: str = "") -> None:
    """Refuse float pixels that are NaN or infinite (they would silently become 0)."""
    if a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise MRIDataError(path, f"{where}holds {bad} NaN or infinite pixel values; expected finite intensities")


def _pick(img: np.ndarray, channels: tuple[int, ...], path: Path) -> np.ndarray:
    """(H, W[, 3]) → (H, W, C) uint8: () = grey, else the listed channels (a grey file has 3 equal ones)."""
    if not channels:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        return to_uint8(img)[:, :, None]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if max(channels) >= img.shape[2]:
        raise MRIDataError(path, f"has {img.shape[2]} channels; channel {max(channels)} was asked for")
    return np.stack([to_uint8(img[:, :, c]) for c in channels], axis=2)


def read_image(path: str | os.PathLike, channels: tuple[int, ...] = ()) -> np.ndarray:
    """Read a 2D PNG/JPEG/TIFF as the model's input: uint8 (H, W, C) 0..255.

    ``channels``: () = one grey channel; else indices into the file's RGB channels in file order
    (LGG: 0 pre-contrast, 1 FLAIR, 2 post-contrast; a grey file has three equal ones), e.g. from
    :func:`~toolkit.data.mri.channels.resolve_channels`. 16-bit and float files are scaled with
    :func:`to_uint8`. Raises MRIDataError naming the file.
    """
    path = Path(path)
    return _pick(_decode(path), tuple(channels), path)


def _binary(mask: np.ndarray, path: Path, shape: tuple[int, int], image_path: Path, lossy: bool = False) -> np.ndarray:
    """Check a 2D mask against its image's (H, W) and binarise it to uint8 {0, 1}."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.shape != shape:
        raise MRIDataError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {image_path} is "
                                 f"{shape[0]}x{shape[1]}; a mask must have its image's size")
    if lossy:  # JPEG blurs the edges of a {0, 255} mask: threshold at half range
        return (mask >= 128).astype(np.uint8)
    values = np.unique(mask)
    top = 65535 if mask.dtype == np.uint16 else 255
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, top}):
        shown = values[:8].tolist()
        raise MRIDataError(path, f"mask is not binary: it holds the values {shown}{' ...' if len(values) > 8 else ''} "
                                 f"({len(values)} distinct); expected only {{0, 255}} or {{0, 1}}")
    return (mask > 0).astype(np.uint8)


def open_figshare_mat(path: Path):
    """Open a figshare .mat slice (MATLAB v7.3 = HDF5) as an open ``h5py.File`` (use it in ``with``).

    It holds ``cjdata/image`` (int16) and ``cjdata/tumorMask``, stored transposed. Raises
    MRIDataError naming the file for a v5 .mat, an unreadable file or another layout.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        try:
            with open(path, "rb") as fh:
                head = fh.read(20)
        except OSError:
            head = b""
        if head.startswith(b"MATLAB 5.0"):
            raise MRIDataError(path, "a MATLAB v5 .mat file; expected v7.3 (HDF5), as figshare ships them") from err
        raise MRIDataError(path, f"cannot open it as a MATLAB v7.3 (HDF5) .mat file: {err}") from err
    cjdata = f.get("cjdata")
    if not isinstance(cjdata, h5py.Group) or not all(isinstance(cjdata.get(k), h5py.Dataset)
                                                     for k in ("image", "tumorMask")):
        f.close()
        raise MRIDataError(path, "no cjdata/image and cjdata/tumorMask arrays in this .mat file (not the figshare "
                                 "layout)")
    return f


def figshare_patient(f, path: Path) -> str:
    """The patient id in an open figshare .mat (``cjdata/PID``: MATLAB char, integer character codes), "" when
    it has none; MRIDataError naming the file when it holds anything else."""
    import h5py

    pid = f["cjdata"].get("PID")
    if pid is None:
        return ""
    codes = np.asarray(pid[()]) if isinstance(pid, h5py.Dataset) else None
    if codes is None or codes.dtype.kind not in "iu" or codes.size and not 0 <= codes.min() <= codes.max() < 0x110000:
        what = "no array" if codes is None else f"{codes.dtype} values" if codes.dtype.kind not in "iu" else \
            f"codes {codes.min()}..{codes.max()}"
        raise MRIDataError(path, f"cjdata/PID holds {what}; expected the patient id as MATLAB char (character codes)")
    return "".join(chr(c) for c in codes.ravel().tolist() if c)


def read_slice(rec: MRISlice, volumes: dict | None = None, labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one slice at its own size: (image uint8 (H, W, C) 0..255, mask uint8 (H, W)).

    C = ``rec.num_channels``; H, W are the file's (figshare 512x512 or 256x256, LGG 256x256, BraTS
    240x240). The mask is {0, 1} (label > 0 for NIfTI label maps); with ``labels=True`` a NIfTI
    slice's mask holds the file's label values (e.g. 0..4) and a 2D mask stays {0, 1}. 2D intensities
    that are not uint8 are scaled per slice with :func:`to_uint8`; NIfTI volumes are z-scored per
    volume (:mod:`toolkit.data.mri.nifti`). ``volumes``: a dict the caller keeps while reading the
    slices of one NIfTI case, so that each volume is read and normalised once (empty it between
    cases). Raises :class:`MRIDataError` naming the file for any problem with it: unreadable or
    truncated, a mask of another size, a mask not binary, labels not declared.
    """
    try:
        if rec.source in ("folder", "lgg"):
            img = read_image(rec.image_path, rec.channels)
            lossy = rec.mask_path.suffix.lower() in (".jpg", ".jpeg")
            return img, _binary(_decode(rec.mask_path), rec.mask_path, img.shape[:2], rec.image_path, lossy)
        if rec.source == "figshare_mat":
            with open_figshare_mat(rec.image_path) as f:
                for key in ("cjdata/image", "cjdata/tumorMask"):
                    if len(f[key].shape) != 2 or int(np.prod(f[key].shape, dtype=object)) > MAX_PIXELS:
                        raise MRIDataError(rec.image_path, f"{key} has shape {f[key].shape}; expected a 2D slice "
                                                           f"of at most {MAX_PIXELS:,} pixels")
                image, mask = f["cjdata/image"][()].T, f["cjdata/tumorMask"][()].T  # MATLAB is column-major
            _check_finite(image, rec.image_path, "cjdata/image ")
            return to_uint8(image)[:, :, None], _binary(mask, rec.mask_path, image.shape, rec.image_path)
        if rec.source in NIFTI_SOURCES:
            return nifti.read_volume_slice(rec, volumes, labels)
        raise ValueError(f"unknown source {rec.source!r} of slice {rec.id}")
    except MRIDataError:
        raise
    except Exception as err:  # anything else still names the file
        raise MRIDataError(rec.image_path, f"cannot read slice {rec.id}: {type(err).__name__}: {err}") from err
