"""The nnU-Net / Medical Segmentation Decathlon raw layout as a brain-MRI source ("raw").

::

    <root>/dataset.json
    <root>/imagesTr/<case>_<XXXX><file_ending>     one file per channel, XXXX = 4-digit channel index
    <root>/labelsTr/<case><file_ending>            label map (integers declared in dataset.json)
    <root>/brainmasksTr/<case><file_ending>        optional: brain mask (voxels > 0), for normalisation
    <root>/imagesTs/<case>_<XXXX><file_ending>     optional: cases to predict (no labels)

``dataset.json`` (nnU-Net v2): ``channel_names`` ({"0": "FLAIR", "1": "T1c"}), ``labels``
({"background": 0, "necrosis": 1, ...}, integers 0..255), optional ``regions`` or ``regions_brats``
({"whole_tumour": [1, 2, 3, 4], ...}, lists of declared labels), ``file_ending`` (default ".nii.gz";
only NIfTI is read). nnU-Net v2's region-style ``labels`` (lists with ``regions_class_order``) is
not supported: declare plain labels and put the regions in ``regions``.

Checks (each an :class:`~toolkit.data.errors.MRIDataError` naming the file, or dataset.json and its
field): a channel file missing for a case, a label file missing, a channel file of an undeclared
channel, shapes or affines that disagree between a case's channels, label and brain mask (affines
within :data:`AFFINE_ATOL`), a non-finite or singular affine; label values outside ``labels``
are refused when the label volume is read (:func:`toolkit.data.mri.nifti.label_volume`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import MRIDataError
from .channels import channel_indices, parse_slice_rule
from .io import MRISlice, natural_key
from .nifti import brain_region, load_nifti, voxel_spacing

__all__ = ["AFFINE_ATOL", "DATASET_JSON", "RawCase", "RawSpec", "check_grid", "find_raw", "raw_case_slices",
           "raw_cases", "read_dataset_json", "resolve_raw_channels"]

DATASET_JSON = "dataset.json"
#: Largest difference allowed between the affines (mm, or direction cosines) of one case's volumes.
AFFINE_ATOL = 1e-3
_NIFTI_ENDINGS = (".nii.gz", ".nii")


class RawSpec(NamedTuple):
    """What ``dataset.json`` declares: ``channel_names`` (tuple of str, in channel index order),
    ``labels`` (dict name → int 0..255), ``regions`` (dict name → list of label ints, or None) and
    ``file_ending`` (str, ".nii.gz" or ".nii")."""

    channel_names: tuple[str, ...]
    labels: dict[str, int]
    regions: dict[str, list[int]] | None
    file_ending: str


class RawCase(NamedTuple):
    """One case of ``imagesTr`` or ``imagesTs``: ``case`` (id), ``channels`` (Path per declared channel, in
    index order), ``label`` (labelsTr file, None for imagesTs) and ``brain_mask`` (brainmasks file or None)."""

    case: str
    channels: tuple[Path, ...]
    label: Path | None
    brain_mask: Path | None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_dataset_json(root: Path) -> RawSpec:
    """Parse and check ``root/dataset.json``. Raises MRIDataError naming the file and the bad field."""
    path = Path(root) / DATASET_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is fine
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MRIDataError(path, f"cannot read it as JSON: {err}") from err
    if not isinstance(meta, dict):
        raise MRIDataError(path, f"holds a {type(meta).__name__}; expected a JSON object")
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(names, dict) or not names:
        raise MRIDataError(path, "field 'channel_names' is missing or empty; expected e.g. {\"0\": \"FLAIR\"}")
    if sorted(names) != [str(i) for i in range(len(names))] or not all(isinstance(v, str) for v in names.values()):
        raise MRIDataError(path, f"field 'channel_names' must map '0'..'{len(names) - 1}' to names, got {names}")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MRIDataError(path, "field 'labels' is missing or empty; expected e.g. {\"background\": 0, \"tumour\": 1}")
    bad = {k: v for k, v in labels.items() if not _is_int(v) or not 0 <= v <= 255}
    if bad:
        raise MRIDataError(path, f"field 'labels' must map names to integers 0..255, got {bad} (nnU-Net region-style "
                                 "labels are not supported: put regions in 'regions')")
    if len(set(labels.values())) != len(labels):
        raise MRIDataError(path, f"field 'labels' gives one value to two names: {labels}")
    if 0 not in labels.values():  # else every label volume's background would be refused as undeclared
        raise MRIDataError(path, f"field 'labels' must declare the background, value 0 (e.g. \"background\": 0), "
                                 f"got {labels}")
    key = "regions" if "regions" in meta else "regions_brats" if "regions_brats" in meta else None
    regions = meta.get(key) if key else None
    foreground = sorted(v for v in labels.values() if v > 0)
    if key and (not isinstance(regions, dict) or not all(
            isinstance(r, list) and r and all(_is_int(v) and v in foreground for v in r) for r in regions.values())):
        raise MRIDataError(path, f"field {key!r} must map names to lists of declared foreground label values "
                                 f"{foreground} (not the background, 0), got {regions}")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in _NIFTI_ENDINGS:
        raise MRIDataError(path, f"field 'file_ending' is {ending!r}; only NIfTI ({', '.join(_NIFTI_ENDINGS)}) is read")
    return RawSpec(tuple(names[str(i)] for i in range(len(names))), dict(labels),
                   {k: list(v) for k, v in regions.items()} if regions else None, ending)


def raw_cases(root, split: str = "Tr", spec: RawSpec | None = None,
              skipped: list[tuple[Path, str]] | None = None) -> list[RawCase]:
    """The cases of ``root/images<split>`` (split "Tr" or "Ts"), naturally sorted by case id.

    Each has one file per declared channel; "Tr" cases need ``labelsTr/<case>``, "Ts" cases get the
    label file only if ``labelsTs/<case>`` exists. ``brain_mask`` is ``brainmasks<split>/<case>`` when
    present. A missing channel or label file, or a file of an undeclared channel, raises MRIDataError
    naming that file, or with ``skipped`` (a list) is appended there as (path, reason) and the case
    left out. FileNotFoundError when the images folder is missing.
    """
    root = Path(root)
    if split not in ("Tr", "Ts"):
        raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
    spec = spec or read_dataset_json(root)
    images, ending = root / f"images{split}", spec.file_ending
    if not images.is_dir():
        raise FileNotFoundError(f"no images{split} folder in {root}")
    pattern = re.compile(rf"(.+)_(\d{{4}}){re.escape(ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for p in images.iterdir():
        m = pattern.match(p.name)
        if m and not p.name.startswith("."):
            found.setdefault(m.group(1), {})[int(m.group(2))] = p
    out = []
    for case in sorted(found, key=natural_key):
        try:
            out.append(_one_case(root, split, spec, case, found[case]))
        except MRIDataError as err:
            if skipped is None:
                raise
            skipped.append((err.path, err.reason))
    return out


def _one_case(root: Path, split: str, spec: RawSpec, case: str, chans: dict[int, Path]) -> RawCase:
    ending, n = spec.file_ending, len(spec.channel_names)
    extra = sorted(set(chans) - set(range(n)))
    if extra:
        raise MRIDataError(chans[extra[0]], f"channel {extra[0]:04d} is not declared in {DATASET_JSON} "
                                            f"channel_names ({n} channels)")
    for k in range(n):
        if k not in chans:
            raise MRIDataError(root / f"images{split}" / f"{case}_{k:04d}{ending}",
                               f"channel file missing for case {case} (channel {k} = {spec.channel_names[k]})")
    label = root / f"labels{split}" / f"{case}{ending}"
    if not label.is_file():
        if split == "Tr":
            raise MRIDataError(label, f"label file missing for case {case}")
        label = None
    brain = root / f"brainmasks{split}" / f"{case}{ending}"
    return RawCase(case, tuple(chans[k] for k in range(n)), label, brain if brain.is_file() else None)


def resolve_raw_channels(names: tuple[str, ...], channels) -> tuple[int, ...]:
    """A ``channels`` choice → indices into ``names`` (dataset.json channel_names). None, "all", "default", 0
    (what the data has) or the count len(names) = every channel (as nnU-Net); else names (case-insensitive) or
    indices, as a list or comma-separated string. Raises ValueError for an unknown or repeated channel."""
    every = tuple(range(len(names)))
    if channels is None or (isinstance(channels, str) and channels.strip().lower() in ("", "all", "default")):
        return every
    if _is_int(channels) or isinstance(channels, np.integer):
        if int(channels) in (0, len(names)):
            return every
        raise ValueError(f"this data set has {len(names)} channel(s) ({', '.join(names)}); a channel count must "
                         f"be {len(names)}, got {channels}; or name the channels")
    items = [t.strip() for t in channels.split(",") if t.strip()] if isinstance(channels, str) else list(channels)
    return channel_indices(items, names, "this data set")


def check_grid(case: str, files) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    """The volumes ``files`` (Paths) of one case (id ``case``) share one voxel grid: the same shape and affines within
    :data:`AFFINE_ATOL`, each finite and non-singular. Returns (shape, spacing in mm along X, Y, Z from the affine);
    MRIDataError naming the file that disagrees with the first."""
    heads = [(p, load_nifti(p, data=False)) for p in files]
    ref_path, ref = heads[0]
    for p, h in heads:
        if tuple(h.shape) != tuple(ref.shape):
            raise MRIDataError(p, f"volume of shape {tuple(h.shape)} but {ref_path.name} of case {case} is "
                                  f"{tuple(ref.shape)}; a case's channels and label must match")
        aff = np.asarray(h.affine, dtype=np.float64)
        if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise MRIDataError(p, f"bad affine (non-finite or singular): {aff.tolist()}")
        if not np.allclose(aff, ref.affine, rtol=0, atol=AFFINE_ATOL):
            raise MRIDataError(p, f"affine differs from that of {ref_path.name} by up to "
                                  f"{np.abs(aff - ref.affine).max():.3g} (tolerance {AFFINE_ATOL}); the volumes "
                                  "of a case must share their voxel grid")
    return tuple(ref.shape), voxel_spacing(ref)  # from the affine checked above, not the header's pixdim


def _check_headers(case: RawCase) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    """Shapes and affines of a case's volumes agree and are sane: returns (shape, spacing)."""
    return check_grid(case.case, [p for p in (*case.channels, case.label, case.brain_mask) if p is not None])


def _kept_slices(case: RawCase, rule: str, extra: int, depth: int, first: int) -> list[int]:
    """Slice indices per ``slice_rule``: brain = brain mask, else first kept channel != its voxel (0, 0, 0)."""
    if rule == "all":
        return list(range(depth))
    brain = tumour = None
    if rule == "nonempty" or extra:
        vol = load_nifti(case.brain_mask) if case.brain_mask else load_nifti(case.channels[first])
        brain = brain_region(vol, vol if case.brain_mask else None).any(axis=(0, 1))
    if rule == "tumour":
        tumour = (np.asarray(load_nifti(case.label)) > 0).any(axis=(0, 1))
    keep_mask = tumour if rule == "tumour" else brain
    keep = np.flatnonzero(keep_mask).tolist()
    if extra:  # plus N tumour-free brain slices, evenly spaced
        free = np.flatnonzero(brain & ~tumour)
        picked = np.linspace(0, len(free) - 1, min(extra, len(free))).round().astype(int)
        keep = sorted(set(keep) | set(free[picked].tolist()))
    return keep


def find_raw(root: Path, channels, rule, skipped) -> list[MRISlice]:
    """The slices of ``root``'s imagesTr cases (see :func:`~toolkit.data.mri.discover.discover_mri_slices`):
    id ``<case>_z<index:03d>``, patient = case, source "raw". A bad case raises MRIDataError, or with
    ``skipped`` (a list) is appended there as (path, reason). A bad dataset.json always raises."""
    spec = read_dataset_json(root)
    ch = resolve_raw_channels(spec.channel_names, channels)
    rule, extra = parse_slice_rule(rule)
    declared = tuple(sorted(spec.labels.values()))
    out = []
    for case in raw_cases(root, "Tr", spec, skipped):
        try:
            out += _slices(case, ch, rule, extra, declared)
        except MRIDataError as err:
            if skipped is None:
                raise
            skipped.append((err.path, err.reason))
    return out


def _slices(case: RawCase, ch: tuple[int, ...], rule: str, extra: int, declared: tuple[int, ...]) -> list[MRISlice]:
    shape, spacing = _check_headers(case)
    keep = _kept_slices(case, rule, extra, shape[2], ch[0])
    paths = tuple(case.channels[k] for k in ch)
    return [MRISlice(f"{case.case}_z{k:03d}", case.case, "raw", paths[0], case.label, k, ch, paths,
                     spacing=spacing, brain_mask_path=case.brain_mask, label_values=declared) for k in keep]


def raw_case_slices(case: RawCase, spec: RawSpec, channels=None, slice_rule: str | None = "all") -> list[MRISlice]:
    """The slices of one case from :func:`raw_cases` (e.g. an imagesTs case to predict), as MRISlice records
    that :func:`~toolkit.data.mri.io.read_slice` reads (z-scored uint8 (H, W, C); an all-0 mask when the
    case has no label file, whose ``mask_path`` is then None). ``slice_rule`` as for discovery (default
    "all": every slice, for whole-volume prediction; tumour rules need a label). Raises MRIDataError
    naming a file whose shape or affine disagrees, ValueError for a tumour rule without a label."""
    rule, extra = parse_slice_rule(slice_rule)
    if case.label is None and (rule == "tumour" or extra):
        raise ValueError(f"slice_rule={slice_rule!r} needs labels; case {case.case} has none")
    return _slices(case, resolve_raw_channels(spec.channel_names, channels), rule, extra,
                   tuple(sorted(spec.labels.values())))
