"""``toolkit predict`` on NIfTI volumes: a label volume and an overlay figure per case.

Inputs (:func:`find_volume_cases`): one ``.nii.gz`` file (a one-channel case), one channel file of a
case (``<case>_0000.nii.gz``: all its siblings ``<case>_XXXX.nii.gz`` are the case's channels), a
raw-layout folder (``dataset.json``; its ``imagesTs/`` cases, else ``imagesTr/``) or a folder of
``.nii.gz`` cases. Each case is predicted slice by slice along Z as the run was trained
(:func:`predict_volume`), and written as ``<case>_seg.nii.gz`` (uint8 label values, the input's affine
and header) and ``<case>_seg.png`` (:func:`write_case`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .data.errors import MRIDataError
from .data.mri.context import volume_context
from .data.mri.io import to_uint8
from .data.mri.nifti import brain_region, check_finite, load_nifti, save_nifti, zscore_uint8
from .data.mri.raw import DATASET_JSON, raw_cases, read_dataset_json, resolve_raw_channels
from .seg_commands import _write_png
from .volume_postprocess_run import stored_volume_postprocess

__all__ = ["VolumeCase", "find_volume_cases", "is_nifti_input", "label_overlay", "normalise_channels",
           "predict_volume", "predict_volumes", "write_case"]

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})(\.nii(?:\.gz)?)$")
#: BGR colour of each label value in the overlay (others: white): 1 blue, 2 green, 3 yellow, 4 red.
PALETTE = {1: (255, 64, 0), 2: (0, 200, 0), 3: (0, 220, 255), 4: (0, 0, 255)}


class VolumeCase(NamedTuple):
    """One case to predict: ``case`` (id, str), ``channels`` (Path per channel, in channel order) and
    ``brain_mask`` (Path of a brain-mask volume, voxels > 0 = brain, or None)."""

    case: str
    channels: tuple[Path, ...]
    brain_mask: Path | None = None


def _nifti_stem(path: Path) -> str | None:
    """``x.nii.gz`` / ``x.nii`` → "x"; None for any other file name."""
    return next((path.name[: -len(e)] for e in NIFTI_ENDINGS if path.name.endswith(e)), None)


def is_nifti_input(source: Path) -> bool:
    """True for a NIfTI file, a folder with ``dataset.json``, or a folder holding ``.nii``/``.nii.gz`` files."""
    if source.is_file():
        return _nifti_stem(source) is not None
    return source.is_dir() and ((source / DATASET_JSON).is_file()
                                or any(_nifti_stem(p) for p in source.iterdir() if p.is_file()))


def _sibling_mask(first: Path, case: str) -> Path | None:
    """``brainmasks<split>/<case>`` beside a raw layout's ``images<split>/`` folder, if there is one."""
    folder = first.parent
    if not folder.name.startswith("images") or _nifti_stem(first) is None:
        return None
    ending = first.name[len(_nifti_stem(first)):]
    mask = folder.parent / f"brainmasks{folder.name[len('images'):]}" / f"{case}{ending}"
    return mask if mask.is_file() else None


def _group(files: list[Path]) -> list[VolumeCase]:
    """NIfTI files → cases: ``<case>_XXXX`` files grouped by case (channel order), any other file alone."""
    groups: dict[str, dict[int, Path]] = {}
    for p in files:
        m = _CHANNEL_FILE.match(p.name)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = p
        else:
            groups.setdefault(_nifti_stem(p), {})[0] = p
    cases = []
    for case in sorted(groups):
        chans = tuple(groups[case][k] for k in sorted(groups[case]))
        cases.append(VolumeCase(case, chans, _sibling_mask(chans[0], case)))
    return cases


def find_volume_cases(source: Path) -> list[VolumeCase]:
    """The cases ``--input`` names (see the module docstring), sorted by case id.

    Predicted outputs (``*_seg.nii.gz``) are never taken as input. Raises FileNotFoundError for a
    missing path or a folder without NIfTI cases, MRIDataError for a bad ``dataset.json`` or raw case.
    """
    source = Path(source)
    if source.is_file():
        m = _CHANNEL_FILE.match(source.name)
        files = [p for p in source.parent.iterdir() if m and p.name.startswith(f"{m.group(1)}_")
                 and (q := _CHANNEL_FILE.match(p.name)) and q.group(1) == m.group(1)] if m else [source]
        return _group(sorted(files))
    if not source.is_dir():
        raise FileNotFoundError(f"--input {source} does not exist")
    if (source / DATASET_JSON).is_file():
        spec = read_dataset_json(source)
        split = "Ts" if (source / "imagesTs").is_dir() and any((source / "imagesTs").iterdir()) else "Tr"
        return [VolumeCase(c.case, c.channels, c.brain_mask) for c in raw_cases(source, split, spec)]
    files = sorted(p for p in source.iterdir() if p.is_file() and _nifti_stem(p)
                   and not _nifti_stem(p).endswith("_seg") and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"--input {source} holds no .nii.gz/.nii volumes (nor a {DATASET_JSON})")
    return _group(files)


def normalise_channels(volumes: list[np.ndarray], intensity: str, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Channel volumes (each (X, Y, Z), real, finite) → uint8 (X, Y, Z, C) as the run's training read them.

    ``intensity`` "zscore": each channel z-scored over the brain (``brain_mask`` > 0, else the voxels that
    differ from voxel (0, 0, 0)) and stored as uint8 (:func:`~toolkit.data.mri.nifti.zscore_uint8`);
    "per_slice": each slice of each channel scaled on its own (:func:`~toolkit.data.mri.io.to_uint8`).
    Raises ValueError for another ``intensity``.
    """
    if intensity == "zscore":
        chans = [zscore_uint8(v, brain_region(v, brain_mask)) for v in volumes]
    elif intensity == "per_slice":
        chans = [np.stack([to_uint8(np.asarray(v[:, :, k])) for k in range(v.shape[2])], axis=2) for v in volumes]
    else:
        raise ValueError(f"the run's intensity must be 'zscore' or 'per_slice', got {intensity!r}")
    return np.stack(chans, axis=3)


@torch.no_grad()
def predict_volume(ensemble, volume: np.ndarray, size: int, threshold: float = 0.5, flips: bool = False,
                   batch_size: int = 16, context: int = 0) -> np.ndarray:
    """Label volume of one case: ``volume`` uint8 (X, Y, Z, C) from :func:`normalise_channels` → uint8
    (X, Y, Z) label values of the ensemble's target (:meth:`~toolkit.targets.TargetSpec.to_labels`).
    ``context``: the run's 2.5D neighbours on each side, stacked per slice as in training
    (:func:`~toolkit.data.mri.context.volume_context`: the model sees C x (2 context + 1) channels).

    Each slice (X, Y, C) is resized to ``size`` x ``size`` as in training (INTER_AREA when shrinking,
    INTER_LINEAR when growing), predicted in batches of ``batch_size`` with ``ensemble.preprocess`` and
    ``ensemble(x, flips)``, and its probabilities resized back to (X, Y) (bilinear) before ``to_labels``.
    """
    volume = volume_context(volume, context)
    x_size, y_size, depth = volume.shape[:3]
    interp = cv2.INTER_AREA if max(x_size, y_size) > size else cv2.INTER_LINEAR
    device = next(ensemble.parameters()).device
    out = np.zeros(volume.shape[:3], np.uint8)
    for start in range(0, depth, batch_size):
        ks = range(start, min(start + batch_size, depth))
        slices = [cv2.resize(np.ascontiguousarray(volume[:, :, k]), (size, size), interpolation=interp) for k in ks]
        batch = torch.from_numpy(np.stack([s.reshape(size, size, -1) for s in slices])).permute(0, 3, 1, 2)
        probs = ensemble(ensemble.preprocess(batch.to(device)), flips=flips).float()
        probs = F.interpolate(probs, size=(x_size, y_size), mode="bilinear", align_corners=False)
        out[:, :, start:start + len(ks)] = ensemble.target.to_labels(probs, threshold).cpu().numpy().transpose(1, 2, 0)
    return out


def label_overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) scan + uint8 (H, W) label values → BGR uint8 (H, W, 3): each label value tinted in its
    :data:`PALETTE` colour (40%) with its outline drawn."""
    bgr = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2BGR)
    tint = bgr.copy()
    for value in np.unique(labels[labels > 0]):
        tint[labels == value] = PALETTE.get(int(value), (255, 255, 255))
    out = cv2.addWeighted(bgr, 0.6, tint, 0.4, 0)
    for value in np.unique(labels[labels > 0]):
        contours, _ = cv2.findContours((labels == value).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = cv2.drawContours(out, contours, -1, PALETTE.get(int(value), (255, 255, 255)), 1)
    return out


def write_case(out_dir: Path, case: str, labels: np.ndarray, reference, grey: np.ndarray) -> tuple[Path, Path, int]:
    """Write ``<case>_seg.nii.gz`` (``labels`` uint8 (X, Y, Z) with ``reference``'s affine and header, data
    dtype uint8) and ``<case>_seg.png`` (the middle slice among those with predicted tumour, else the
    middle slice, channel 0 ``grey`` uint8 (X, Y, Z) under :func:`label_overlay`), both atomically.
    Returns (NIfTI path, PNG path, the slice index drawn)."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    seg = save_nifti(out_dir / f"{case}_seg.nii.gz", labels.astype(np.uint8), reference.affine, header)
    tumour = np.flatnonzero(labels.any(axis=(0, 1)))
    k = int(tumour[len(tumour) // 2]) if len(tumour) else labels.shape[2] // 2
    png = out_dir / f"{case}_seg.png"
    _write_png(png, label_overlay(grey[:, :, k], labels[:, :, k]))
    return seg, png, k


def _raw_root(case: VolumeCase, source: Path) -> Path | None:
    """The raw-layout folder (with ``dataset.json``) the case's files belong to: ``source`` itself, or the folder
    of its channel files or the one above it (``<root>/imagesTr/``); None when there is none."""
    for folder in (source, case.channels[0].parent, case.channels[0].parent.parent):
        if folder.is_dir() and (folder / DATASET_JSON).is_file():
            return folder
    return None


def _picked_indices(picked, root: Path | None) -> tuple[int, ...] | None:
    """The 4-digit channel indices (``<case>_XXXX``) of the run's ``channels`` setting: names resolved with the
    ``dataset.json`` of the raw layout at ``root``, plain indices ("0,2") also without one; None when the run
    chose no channels, or names them and there is no ``dataset.json`` to read the names from."""
    if not (isinstance(picked, str) and picked.strip()):
        return None
    if root is not None:
        return resolve_raw_channels(read_dataset_json(root).channel_names, picked)
    items = [t.strip() for t in picked.split(",") if t.strip()]
    return tuple(int(t) for t in items) if all(t.isdigit() for t in items) else None


def _case_channels(case: VolumeCase, cfg: dict, source: Path) -> tuple[Path, ...]:
    """The case's channel files the run reads: its ``channels`` subset by the 4-digit channel index of
    ``<case>_XXXX.nii.gz`` (:func:`_picked_indices`) where a ``dataset.json`` names them or the case has more files
    than the run reads, else every file; MRIDataError naming the case and the channels found when their count is
    not the run's ``in_channels``, or when a run of every channel of its data gets a case whose numbered files
    leave a channel out (``<case>_0001`` and ``_0002`` without ``_0000``: they would be read as channels 0 and 1)."""
    chans, want = case.channels, int(cfg.get("in_channels", 1))
    picked = cfg.get("channels")
    root = _raw_root(case, Path(source))
    wanted = _picked_indices(picked, root) if root is not None or len(chans) > want else None  # else: as given
    if wanted is not None:
        by_index = {int(m.group(2)): p for p in chans if (m := _CHANNEL_FILE.match(p.name))}
        missing = [k for k in wanted if k not in by_index]
        if missing:
            raise MRIDataError(chans[0], f"case {case.case} lacks channel file(s) "
                                         f"{', '.join(f'{case.case}_{k:04d}' for k in missing)} of the run's "
                                         f"channels {picked!r}")
        chans = tuple(by_index[k] for k in wanted)
    elif isinstance(picked, str) and picked.strip() and len(chans) > want:
        raise MRIDataError(chans[0], f"the run reads the channels {picked!r} of its data, named in a raw layout's "
                                     f"{DATASET_JSON}, but none lies beside case {case.case}'s files: give the raw-"
                                     f"layout folder as --input, or its images folder with {DATASET_JSON} one up")
    elif len(chans) > 1 and not (isinstance(picked, str) and picked.strip()):  # every channel of its data, in
        # order: <case>_0000 .. the last, none left out (else the files would stand for other channels)
        numbered = [int(m.group(2)) if (m := _CHANNEL_FILE.match(p.name)) else -1 for p in chans]
        missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
        if missing:
            raise MRIDataError(chans[0], f"case {case.case} lacks channel file(s) "
                                         f"{', '.join(f'{case.case}_{k:04d}' for k in missing)}: its files are "
                                         f"{', '.join(p.name for p in chans)}, and the run reads channels 0000.."
                                         f"{want - 1:04d} of its data in order (channel files are numbered from 0000)")
    if len(chans) != want:
        found = ", ".join(p.name for p in case.channels)
        raise MRIDataError(case.channels[0], f"case {case.case} has {len(chans)} channel file(s) ({found}) but the "
                                             f"model expects {want} (in_channels of the run); give a case's "
                                             f"<case>_0000.nii.gz with its {want} sibling channel files")
    return chans


def _intensities(path: Path) -> np.ndarray:
    """float32 (X, Y, Z) voxels of a channel file; MRIDataError naming it for NaN/inf voxels, as training does."""
    volume = np.asarray(load_nifti(path), dtype=np.float32)
    check_finite(volume, path)
    return volume


def predict_volumes(ensemble, cfg: dict, post, source: Path, out_dir: Path, batch_size: int = 16,
                    post_source: str | None = None) -> int:
    """``toolkit predict`` on NIfTI input ``source`` (see :func:`find_volume_cases`) into ``out_dir``.

    ``cfg``: the run's config (``image_size``, ``in_channels``, ``channels``, ``intensity``); ``post``: the
    chosen :class:`~toolkit.postprocess.PostProcess` (its ``threshold`` and ``flips`` apply; its 2D component
    rules do not); ``post_source``: where ``post`` came from (the applied ``postprocess.json``: its 3D choice,
    if any, is applied to each label volume, ``min_voxels`` scaled to the case's in-plane size). Every case's
    channels are checked (count, shape, affine) before any is predicted.
    Returns 0; raises MRIDataError naming a bad file.
    """
    cases = find_volume_cases(source)
    plan = []
    for case in cases:
        chans = _case_channels(case, cfg, Path(source))
        heads = [load_nifti(p, data=False) for p in chans]
        for p, h in zip(chans[1:], heads[1:]):
            if tuple(h.shape) != tuple(heads[0].shape) or not np.allclose(h.affine, heads[0].affine, atol=1e-3):
                raise MRIDataError(p, f"shape {tuple(h.shape)} / affine differ from {chans[0].name} "
                                      f"({tuple(heads[0].shape)}); a case's channels must share one voxel grid")
        plan.append((case, chans, heads[0]))
    size, names = int(cfg["image_size"]), ensemble.target.names
    vpost, line = stored_volume_postprocess(post_source, ensemble.target)
    print(f"{len(plan)} case(s); target {ensemble.target.kind} ({', '.join(names)}); intensity {cfg['intensity']}; "
          f"3D post-processing: {line}")
    for case, chans, ref in plan:
        brain = load_nifti(case.brain_mask) if case.brain_mask is not None else None
        if brain is not None and brain.shape != tuple(ref.shape):
            raise MRIDataError(case.brain_mask, f"brain mask of shape {brain.shape} but case {case.case} is "
                                                f"{tuple(ref.shape)}")
        volume = normalise_channels([_intensities(p) for p in chans], cfg["intensity"], brain)
        labels = predict_volume(ensemble, volume, size, post.threshold, post.flips, batch_size,
                                int(cfg.get("context_slices", 0)))
        if vpost is not None:
            labels = vpost.apply_labels(labels, labels.shape[0] * labels.shape[1] / size**2)
        seg, png, k = write_case(Path(out_dir), case.case, labels, ref, volume[..., 0])
        counts = {int(v): int(n) for v, n in enumerate(np.bincount(labels.ravel())) if v and n}
        print(f"{case.case}: {labels.shape} voxels, label counts {counts or 'none'}; {seg.name}, {png.name} "
              f"(slice {k})")
    print(f"wrote {len(plan)} label volume(s) and overlay(s) to {out_dir}/")
    return 0
