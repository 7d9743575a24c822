"""Which files make a NIfTI case for ``toolkit predict``, and which of them a run reads as its channels.

Inputs (:func:`find_volume_cases`): one ``.nii.gz`` file (a one-channel case), one channel file of a case
(``<case>_0000.nii.gz``: all its siblings ``<case>_XXXX.nii.gz`` are the case's channels), a raw-layout folder
(``dataset.json``; its ``imagesTs/`` cases, else ``imagesTr/``), a folder of ``.nii.gz`` cases, and for a run
trained on BraTS case folders a case folder (``<case>_<modality>.nii.gz``) or one of its volumes.
:func:`case_channels` picks the run's channels among a case's files, in the order training read them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from .data.errors import MRIDataError
from .data.mri.channels import CHANNEL_ALIASES, resolve_channels
from .data.mri.discover import BRATS_FILE
from .data.mri.io import CHANNEL_NAMES
from .data.mri.raw import DATASET_JSON, raw_cases, read_dataset_json, resolve_raw_channels

__all__ = ["NIFTI_ENDINGS", "VolumeCase", "case_channels", "find_volume_cases", "is_nifti_input"]

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})(\.nii(?:\.gz)?)$")
BRATS_NAMES = CHANNEL_NAMES["brats"]


class VolumeCase(NamedTuple):
    """One case to predict: ``case`` (id, str), ``channels`` (Path per channel, in channel order),
    ``brain_mask`` (Path of a brain-mask volume, voxels > 0 = brain, or None) and ``modalities`` (a BraTS case
    folder's files, ``<case>_flair.nii.gz`` ...: each channel's modality, a name of ``CHANNEL_NAMES["brats"]``,
    in that order; () for numbered ``<case>_XXXX`` files and lone volumes)."""

    case: str
    channels: tuple[Path, ...]
    brain_mask: Path | None = None
    modalities: tuple[str, ...] = ()


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


def _channel_of(path: Path, brats: bool = False) -> tuple[str, int | str] | None:
    """(case, channel) of a channel file: ``<case>_XXXX.nii.gz`` → (case, XXXX as int); with ``brats``, a BraTS
    case folder's ``<case>_<modality>.nii.gz`` → (case, modality of ``CHANNEL_NAMES["brats"]``, aliases
    resolved); else None."""
    m = _CHANNEL_FILE.match(path.name)
    if m:
        return m.group(1), int(m.group(2))
    b = BRATS_FILE.search(path.name) if brats else None
    modality = CHANNEL_ALIASES.get(b.group(1).lower(), b.group(1).lower()) if b else ""
    return (path.name[:b.start()], modality) if modality in BRATS_NAMES and path.name[:b.start()] else None


def _group(files: list[Path], brats: bool = False) -> list[VolumeCase]:
    """NIfTI files → cases: ``<case>_XXXX`` files grouped by case (channel order), with ``brats`` a BraTS case's
    ``<case>_<modality>`` files likewise (``CHANNEL_NAMES["brats"]`` order), any other file alone."""
    groups: dict[str, dict[int | str, Path]] = {}
    for p in files:
        case, channel = _channel_of(p, brats) or (_nifti_stem(p), 0)
        groups.setdefault(case, {})[channel] = p
    cases = []
    for case in sorted(groups):
        named = all(isinstance(k, str) for k in groups[case])
        keys = sorted(groups[case], key=lambda k: (1, BRATS_NAMES.index(k)) if isinstance(k, str) else (0, k))
        chans = tuple(groups[case][k] for k in keys)
        cases.append(VolumeCase(case, chans, _sibling_mask(chans[0], case), tuple(keys) if named else ()))
    return cases


def find_volume_cases(source: Path, layout: str | None = None) -> list[VolumeCase]:
    """The cases ``--input`` names (see the module docstring), sorted by case id; for a run trained on BraTS case
    folders (``layout`` "brats") also a case folder, or one of its volumes, ``<case>_<modality>.nii.gz``.

    Predicted outputs (``*_seg.nii.gz``) and BraTS 2023 segmentations (``*-seg.nii.gz``) are never taken as
    input. Raises FileNotFoundError for a missing path or a folder without NIfTI cases, MRIDataError for a bad
    ``dataset.json`` or raw case.
    """
    source = Path(source)
    if source.is_file():  # a channel file: with its siblings (the other channels of its case)
        brats = layout == "brats"
        given = _channel_of(source, brats)
        files = [p for p in source.parent.iterdir() if given and (q := _channel_of(p, brats)) and q[0] == given[0]
                 and isinstance(q[1], str) == isinstance(given[1], str)] if given else [source]
        return _group(sorted(files), brats)
    if not source.is_dir():
        raise FileNotFoundError(f"--input {source} does not exist")
    if (source / DATASET_JSON).is_file():
        spec = read_dataset_json(source)
        cases = raw_cases(source, "Ts", spec) if (source / "imagesTs").is_dir() else []
        cases = cases or raw_cases(source, "Tr", spec)  # imagesTs without a case (e.g. only .DS_Store): imagesTr
        if not cases:
            raise FileNotFoundError(f"--input {source}: no case in imagesTs/ or imagesTr/ (files "
                                    f"<case>_XXXX{spec.file_ending} of the channels in {DATASET_JSON})")
        return [VolumeCase(c.case, c.channels, c.brain_mask) for c in cases]
    files = sorted(p for p in source.iterdir() if p.is_file() and _nifti_stem(p)
                   and not _nifti_stem(p).endswith(("_seg", "-seg")) and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"--input {source} holds no .nii.gz/.nii volumes (nor a {DATASET_JSON})")
    return _group(files, layout == "brats")


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


def _brats_channels(case: VolumeCase, cfg: dict) -> tuple[Path, ...]:
    """A BraTS case folder's files (``case.modalities``) the run reads: those its ``channels`` / ``in_channels``
    name (:func:`~toolkit.data.mri.channels.resolve_channels`, as training read its case folders), in that order;
    MRIDataError naming the case when one is missing."""
    try:
        names = [BRATS_NAMES[k] for k in resolve_channels("brats", cfg.get("channels") or cfg.get("in_channels", 1))]
    except ValueError as err:
        raise MRIDataError(case.channels[0], f"the run's channels: {err}") from None
    have = dict(zip(case.modalities, case.channels))
    missing = [n for n in names if n not in have]
    if missing:
        raise MRIDataError(case.channels[0], f"case {case.case} lacks the {', '.join(missing)} volume(s) the run "
                                             f"reads ({', '.join(names)}); found {', '.join(case.modalities)}")
    return tuple(have[n] for n in names)


def case_channels(case: VolumeCase, cfg: dict, source: Path) -> tuple[Path, ...]:
    """The case's channel files the run reads: its ``channels`` subset by the 4-digit channel index of
    ``<case>_XXXX.nii.gz`` (:func:`_picked_indices`) where a ``dataset.json`` names them or the case has more files
    than the run reads, else every file; MRIDataError naming the case and the channels found when their count is
    not the run's ``in_channels``, or when a run of every channel of its data gets a case whose numbered files
    leave a channel out (``<case>_0001`` and ``_0002`` without ``_0000``: they would be read as channels 0 and 1).
    A BraTS case folder's files go by modality (:func:`_brats_channels`)."""
    chans, want = case.channels, int(cfg.get("in_channels", 1))
    picked = cfg.get("channels")
    if case.modalities:  # a BraTS case folder: by modality
        return _brats_channels(case, cfg)
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
