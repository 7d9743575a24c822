"""NIfTI volumes (the "brats" and "raw" sources): reading, per-volume z-score intensities, label maps.

Intensities (as nnU-Net does for MRI, `explanation_normalization.md`): each channel volume is
z-scored on its own, ``z = (v - mean) / max(std, 1e-8)``, the statistics taken over the
*brain* voxels only. The brain is

- the case's brain mask where the layout has one (raw: ``brainmasksTr/<case>``, voxels > 0),
- else the voxels whose value differs from the volume's background value, taken as the value
  of voxel (0, 0, 0) (0 in skull-stripped BraTS; a constant such as -3.6 in volumes already
  shifted by their distributor). A volume whose corner voxel lies inside the head breaks this
  rule: give it a brain mask.

z is stored as uint8 by clipping to [-ZSCORE_CLIP, +ZSCORE_CLIP] and mapping linearly onto 0..255
(``u = round((z + ZSCORE_CLIP) * 255 / (2 * ZSCORE_CLIP))``); non-brain voxels get 0 (the value
of z = -ZSCORE_CLIP). :func:`toolkit.data.batch_transforms.from_zscore_uint8` undoes the mapping
on the device (one uint8 step is 8/255 ≈ 0.031 standard deviations).

Label volumes must hold integers in 0..255; with declared labels (raw: ``dataset.json``), only
those values. Each volume is read, checked and normalised once per ``volumes`` dict (one case).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import numpy as np

from ...checkpoint import atomic_write
from ..errors import MRIDataError

__all__ = ["MAX_VOXELS", "NIFTI_SOURCES", "ZSCORE_CLIP", "brain_region", "check_finite", "label_volume", "load_nifti",
           "save_nifti", "read_volume_slice", "volume_depth", "voxel_spacing", "zscore_uint8"]

#: Largest NIfTI volume (X x Y x Z voxels) accepted (BraTS: 240 x 240 x 155 = 8.9 M).
MAX_VOXELS = 1 << 28
#: z-scores are clipped to [-ZSCORE_CLIP, +ZSCORE_CLIP] before they are stored as uint8 0..255.
ZSCORE_CLIP = 4.0
#: Sources whose slices come from NIfTI volumes (z-scored per volume; the others are scaled per slice).
NIFTI_SOURCES = ("brats", "raw")


def load_nifti(path: Path, data: bool = True):
    """A 3D NIfTI volume: the array (X, Y, Z) (the file's dtype, scaling applied) if ``data``, else the
    nibabel image (header only). Raises MRIDataError naming the file for an unreadable file, a shape
    other than 3D, or more than :data:`MAX_VOXELS` voxels declared."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if len(img.shape) != 3:
            raise MRIDataError(path, f"volume of shape {img.shape}; expected 3D (X, Y, slices)")
        if int(np.prod(img.shape, dtype=object)) > MAX_VOXELS:
            raise MRIDataError(path, f"header declares a volume of {img.shape} voxels, over the limit of "
                                     f"{MAX_VOXELS:,} (toolkit.data.mri.nifti.MAX_VOXELS); corrupt?")
        return np.asanyarray(img.dataobj) if data else img
    except MRIDataError:
        raise
    except Exception as err:  # nibabel, gzip and zlib raise many kinds for a broken file
        raise MRIDataError(path, f"cannot read the NIfTI volume: {type(err).__name__}: {err}") from err


def voxel_spacing(img) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes (X, Y, Z) of a nibabel image: the lengths of its affine's columns
    (the grid a viewer places it on: the sform, else the qform), rounded to 6 decimals. Not the header's pixdim
    (``get_zooms``), which a file may leave stale beside its sform (e.g. 1 x 1 x 1 beside a 1 x 1.2 x 3 mm sform)."""
    columns = np.linalg.norm(np.asarray(img.affine, dtype=np.float64)[:3, :3], axis=0)
    return tuple(round(float(c), 6) for c in columns)


def brain_region(volume: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """bool (X, Y, Z): ``brain_mask > 0`` if given (same shape), else ``volume != volume[0, 0, 0]``."""
    if brain_mask is not None:
        return np.asarray(brain_mask) > 0
    volume = np.asarray(volume)
    return volume != volume[0, 0, 0]


def zscore_uint8(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Z-score a volume (X, Y, Z), any real dtype, finite, over ``brain`` (bool, same shape) and store
    it as uint8 (X, Y, Z): z clipped to ±:data:`ZSCORE_CLIP` and mapped linearly onto 0..255; voxels
    outside ``brain`` → 0. An empty brain gives zeros; a constant brain gives z = 0 (128)."""
    volume = np.asarray(volume)
    out = np.zeros(volume.shape, np.uint8)
    values = volume[brain].astype(np.float64)
    if values.size == 0:
        return out
    mean, std = float(values.mean()), max(float(values.std()), 1e-8)
    z = (volume[brain].astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.clip(z, -ZSCORE_CLIP, ZSCORE_CLIP, out=z)
    out[brain] = np.rint((z + ZSCORE_CLIP) * (255.0 / (2 * ZSCORE_CLIP))).astype(np.uint8)
    return out


def check_finite(a: np.ndarray, path: Path) -> None:
    """MRIDataError naming ``path`` when float array ``a`` (any shape) holds NaN or infinite values."""
    if a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise MRIDataError(path, f"holds {bad} NaN or infinite voxel values; expected finite intensities")


def label_volume(volume: np.ndarray, path: Path, declared: tuple[int, ...] = ()) -> np.ndarray:
    """Check a label volume (X, Y, Z) and return it as uint8 (X, Y, Z) label values.

    Raises MRIDataError naming ``path`` for non-integer, NaN or negative values, values over 255,
    and, when ``declared`` (the allowed label values) is not empty, values outside it; the message
    lists the bad values and the declared ones.
    """
    a = np.asarray(volume)
    if a.dtype.kind == "f":
        check_finite(a, path)
        if not np.array_equal(a, np.rint(a)):
            raise MRIDataError(path, "holds non-integer labels; expected a label map of integers")
    elif a.dtype.kind not in "iub":
        raise MRIDataError(path, f"label volume of dtype {a.dtype}; expected integers")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise MRIDataError(path, f"labels range over {lo:g}..{hi:g}; expected integers in 0..255")
    labels = a.astype(np.uint8)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist()
    bad = sorted(set(present) - set(declared)) if declared else []
    if bad:
        raise MRIDataError(path, f"holds label values {bad} not declared in dataset.json 'labels' "
                                 f"(declared: {sorted(declared)})")
    return labels


def _cached(vols: dict, key, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``vols[key]``, made once; an MRIDataError is cached too and raised again for every slice."""
    if key not in vols:
        try:
            vols[key] = make()
        except MRIDataError as err:
            vols[key] = err
    if isinstance(vols[key], MRIDataError):
        raise vols[key]
    return vols[key]


def _channel(path: Path, brain_mask: np.ndarray | None, loader) -> np.ndarray:
    vol = loader(path)
    check_finite(vol, path)
    if brain_mask is not None and brain_mask.shape != vol.shape:
        raise MRIDataError(path, f"volume of shape {vol.shape} but its brain mask is {brain_mask.shape}")
    return zscore_uint8(vol, brain_region(vol, brain_mask))


def read_volume_slice(rec, volumes: dict | None = None, labels: bool = False,
                      loader: Callable[[Path], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``rec.index`` of a NIfTI case (an :class:`~toolkit.data.mri.io.MRISlice` of source brats or raw):
    (image uint8 (X, Y, C) z-scored per volume as described above, mask uint8 (X, Y): {0, 1} = label > 0,
    or with ``labels`` the label values; all 0 when ``rec.mask_path`` is None, a case without labels). ``volumes``: a dict kept while reading one case's slices; it then
    holds each channel's normalised uint8 volume, the brain mask and the label volume, each made once.
    ``loader`` reads a volume (default :func:`load_nifti`). Raises MRIDataError naming the bad file."""
    vols, loader = ({} if volumes is None else volumes), loader or load_nifti
    mask_path = getattr(rec, "brain_mask_path", None)
    brain = _cached(vols, ("brain", mask_path), lambda: loader(mask_path) > 0) if mask_path else None
    chans = [_cached(vols, ("zscore", p, mask_path), lambda p=p: _channel(p, brain, loader))
             for p in rec.channel_paths]
    if rec.mask_path is None:  # a case to predict (raw imagesTs): no labels
        seg = np.zeros(chans[0].shape, np.uint8)
    else:
        seg = _cached(vols, ("labels", rec.mask_path), lambda: label_volume(
            loader(rec.mask_path), rec.mask_path, tuple(getattr(rec, "label_values", ()))))
    for p, c in zip(rec.channel_paths, chans):
        if c.shape != seg.shape:
            raise MRIDataError(p, f"volume of shape {c.shape} but the label volume {rec.mask_path} (or the first "
                                  f"channel) is {seg.shape}")
    if not 0 <= rec.index < seg.shape[2]:
        raise MRIDataError(rec.channel_paths[0], f"has {seg.shape[2]} slices; slice {rec.index} was asked for")
    img = np.stack([c[:, :, rec.index] for c in chans], axis=2)
    mask = seg[:, :, rec.index]
    return img, (mask.copy() if labels else (mask > 0).astype(np.uint8))


def volume_depth(rec, volumes: dict | None = None) -> int:
    """Number of slices (last axis) of the NIfTI case of ``rec``: from ``volumes`` when :func:`read_volume_slice`
    has read the case into it (no second read), else from its first channel's header."""
    first = rec.channel_paths[0]
    cached = (volumes or {}).get(("zscore", first, getattr(rec, "brain_mask_path", None)))
    return int((cached if isinstance(cached, np.ndarray) else load_nifti(first, data=False)).shape[2])


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, header=None) -> Path:
    """Write ``array`` (X, Y, Z), any numeric dtype kept as is, as a gzipped NIfTI-1 file, atomically
    (a temporary file beside ``path``, then renamed). ``affine``: float (4, 4) voxel → mm; ``header``:
    a nibabel header to copy (its data dtype is set to ``array``'s). Returns ``path``."""
    import nibabel as nib

    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header)
    img.header.set_data_dtype(array.dtype)
    data = gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)  # mtime 0: same bytes every time
    return atomic_write(path, lambda f: f.write(data))
