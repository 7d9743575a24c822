"""``toolkit predict`` on NIfTI volumes: a label volume and an overlay figure per case.

Inputs (:func:`~toolkit.volume_cases.find_volume_cases`): one ``.nii.gz`` file (a one-channel case), one
channel file of a case (``<case>_0000.nii.gz``: all its siblings ``<case>_XXXX.nii.gz`` are the case's
channels), a raw-layout folder (``dataset.json``; its ``imagesTs/`` cases, else ``imagesTr/``), a folder of
``.nii.gz`` cases, or a BraTS case folder for a run trained on them. Each case is predicted slice by slice
along Z as the run was trained (:func:`predict_volume`), and written as ``<case>_seg.nii.gz`` (uint8 label
values, the input's affine and header) and ``<case>_seg.png`` (:func:`write_case`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .data.errors import MRIDataError
from .data.mri.context import volume_context
from .data.mri.io import to_uint8
from .data.mri.resize import resize_back
from .data.mri.nifti import brain_region, check_finite, load_nifti, save_nifti, zscore_uint8
from .data.mri.raw import check_grid
from .inference import trained_with_flips
from .seg_images import write_png
from .volume_cases import VolumeCase, case_channels, find_volume_cases, is_nifti_input
from .volume_postprocess_run import stored_volume_postprocess

__all__ = ["VolumeCase", "find_volume_cases", "is_nifti_input", "label_overlay", "normalise_channels",
           "predict_volume", "predict_volumes", "write_case"]

#: BGR colour of each label value in the overlay (others: white): 1 blue, 2 green, 3 yellow, 4 red.
PALETTE = {1: (255, 64, 0), 2: (0, 200, 0), 3: (0, 220, 255), 4: (0, 0, 255)}


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
                   batch_size: int = 16, context: int = 0, flip_trained: bool = True,
                   scales: Sequence[float] = ()) -> np.ndarray:
    """Label volume of one case: ``volume`` uint8 (X, Y, Z, C) from :func:`normalise_channels` → uint8
    (X, Y, Z) label values of the ensemble's target (:meth:`~toolkit.targets.TargetSpec.to_labels`).
    ``context``: the run's 2.5D neighbours on each side, stacked per slice as in training
    (:func:`~toolkit.data.mri.context.volume_context`: the model sees C x (2 context + 1) channels).

    Each slice (X, Y, C) is resized to ``size`` x ``size`` as in training (INTER_AREA when shrinking,
    INTER_LINEAR when growing), predicted in batches of ``batch_size`` with ``ensemble.preprocess`` and
    ``ensemble(x, flips, scales)`` (test-time augmentation), and its probabilities resized back to (X, Y) (bilinear, where the masks it learnt from
    lie: :func:`~toolkit.data.mri.resize.resize_back`, ``flip_trained`` as there) before ``to_labels``.
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
        probs = ensemble(ensemble.preprocess(batch.to(device)), flips=flips, scales=scales).float().cpu().numpy()
        probs = torch.from_numpy(np.stack([resize_back(p, y_size, x_size, flip_trained) for p in probs]))  # where its masks lie
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
    dtype uint8, display range ``cal_min``..``cal_max`` 0..the largest label, not the scan's) and ``<case>_seg.png``
    (the middle slice among those with predicted tumour, else the middle slice, channel 0 ``grey`` uint8 (X, Y, Z)
    under :func:`label_overlay`), both atomically. Returns (NIfTI path, PNG path, the slice index drawn)."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header["cal_min"], header["cal_max"] = 0, int(labels.max(initial=0))  # a viewer's window over the scan's range
    seg = save_nifti(out_dir / f"{case}_seg.nii.gz", labels.astype(np.uint8), reference.affine, header)
    tumour = np.flatnonzero(labels.any(axis=(0, 1)))
    k = int(tumour[len(tumour) // 2]) if len(tumour) else labels.shape[2] // 2
    png = out_dir / f"{case}_seg.png"
    write_png(png, label_overlay(grey[:, :, k], labels[:, :, k]))
    return seg, png, k


def _intensities(path: Path) -> np.ndarray:
    """float32 (X, Y, Z) voxels of a channel file; MRIDataError naming it for NaN/inf voxels, as training does."""
    volume = np.asarray(load_nifti(path), dtype=np.float32)
    check_finite(volume, path)
    return volume


def predict_volumes(ensemble, cfg: dict, post, source: Path, out_dir: Path, batch_size: int = 16,
                    post_source: str | None = None, layout: str | None = None) -> int:
    """``toolkit predict`` on NIfTI input ``source`` (see :func:`find_volume_cases`) into ``out_dir``.

    ``cfg``: the run's config (``image_size``, ``in_channels``, ``channels``, ``intensity``); ``post``: the
    chosen :class:`~toolkit.postprocess.PostProcess` (its ``threshold``, ``flips`` and ``scales`` apply; its 2D component
    rules do not); ``post_source``: where ``post`` came from (the applied ``postprocess.json``: its 3D choice,
    if any, is applied to each label volume, ``min_voxels`` scaled to the case's in-plane size); ``layout``: the
    data layout the run trained on (:func:`~toolkit.inference.run_layout`; "brats": a BraTS case folder's
    ``<case>_<modality>`` files are read by modality, and ``<case>_seg.nii.gz`` is not written over the case's own
    segmentation beside them). Every case's channels and brain mask are checked (count; shape and affine:
    :func:`~toolkit.data.mri.raw.check_grid`, as training checks them) before any is predicted.
    Returns 0; raises MRIDataError naming a bad file.
    """
    cases = find_volume_cases(source, layout)
    plan = []
    for case in cases:
        chans = case_channels(case, cfg, Path(source))
        target = Path(out_dir) / f"{case.case}_seg.nii.gz"
        if case.modalities and target.exists() and target.resolve().parent == chans[0].resolve().parent:
            raise MRIDataError(target, f"is case {case.case}'s own segmentation, beside its volumes: predicting "
                                       "into the case folder would write over it; give another --output")
        check_grid(case.case, [*chans, *([case.brain_mask] if case.brain_mask else [])])  # as training checks
        plan.append((case, chans, load_nifti(chans[0], data=False)))
    size, names = int(cfg["image_size"]), ensemble.target.names
    vpost, line = stored_volume_postprocess(post_source, ensemble.target)
    print(f"{len(plan)} case(s); target {ensemble.target.kind} ({', '.join(names)}); intensity {cfg['intensity']}; "
          f"3D post-processing: {line}")
    if post.largest_only or post.min_size:  # --one-region or a stored 2D rule: per slice, not for volumes
        rule = "largest region per slice" if post.largest_only else f"regions under {post.min_size} pixels dropped"
        print(f"note: the 2D component rule ({rule}) does not apply to volumes; the 3D rule of postprocess.json does")
    for case, chans, ref in plan:
        brain = load_nifti(case.brain_mask) if case.brain_mask is not None else None
        volume = normalise_channels([_intensities(p) for p in chans], cfg["intensity"], brain)
        labels = predict_volume(ensemble, volume, size, post.threshold, post.flips, batch_size,
                                int(cfg.get("context_slices", 0)), trained_with_flips(cfg), post.scales)
        if vpost is not None:
            labels = vpost.apply_labels(labels, labels.shape[0] * labels.shape[1] / size**2)
        seg, png, k = write_case(Path(out_dir), case.case, labels, ref, volume[..., 0])
        counts = {int(v): int(n) for v, n in enumerate(np.bincount(labels.ravel())) if v and n}
        print(f"{case.case}: {labels.shape} voxels, label counts {counts or 'none'}; {seg.name}, {png.name} "
              f"(slice {k})")
    print(f"wrote {len(plan)} label volume(s) and overlay(s) to {out_dir}/")
    return 0
