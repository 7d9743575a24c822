"""Where brain-MRI slices come from: five public layouts, auto-detected, read as uint8 2D slices.

``source``        files under ``data_dir``                                          patient id
----------------  ----------------------------------------------------------------  -------------
``folder``        ``images/<id>.<ext>`` + ``masks/<id>_mask.<ext>`` or               ``metadata.csv``
                  ``masks/<id>.<ext>`` (figshare PNGs), or ``<id>.<ext>`` beside     (id,patient_id,
                  ``<id>_mask.<ext>``; ext png/jpg/jpeg/tif/tiff; optional          …) if present,
                  ``metadata.csv`` (:mod:`toolkit.data.mri.metadata`)              else none
``lgg``           ``[kaggle_3m/]<patient>/<name>_<n>.tif`` + ``<name>_<n>_mask.tif``  folder name
                  (Kaggle LGG); channels pre-contrast, FLAIR, post-contrast
``figshare_mat``  ``**/<id>.mat``, MATLAB v7.3 = HDF5: ``cjdata/image`` (int16),     ``cjdata/PID``
                  ``cjdata/tumorMask``, ``cjdata/PID``, stored transposed             (grouped as
                                                                                    metadata.csv's)
``brats``         ``<case>/<case>_{flair,t1,t1ce,t2}.nii[.gz]`` + ``_seg.nii[.gz]``   case folder
                  (BraTS 2023 ``-t2f/-t1n/-t1c/-t2w/-seg`` too); 2D slices along the
                  last axis; label > 0 = tumour
``raw``           nnU-Net / Decathlon: ``dataset.json`` + ``imagesTr/<case>_0000.nii.gz``  case id
                  (one file per channel) + ``labelsTr/<case>.nii.gz`` (declared labels)
                  [+ ``brainmasksTr/<case>.nii.gz``]; :mod:`toolkit.data.mri.raw`

Slices are read by :func:`~toolkit.data.mri.io.read_slice`: uint8 (H, W, C) images, uint8 (H, W)
masks in {0, 1} (or the label values with ``labels=True``). 2D non-uint8 intensities are scaled per
slice with :func:`~toolkit.data.mri.io.to_uint8` (0.5..99.5 percentile of the nonzero pixels → 0..255);
NIfTI volumes (brats, raw) are z-scored per volume over the brain (:mod:`toolkit.data.mri.nifti`):
``Discovery.intensity`` says which. Channel choices: :mod:`toolkit.data.mri.channels`.

Bad input (an unreadable or truncated file, a mask of another size than its image, a mask that
is not binary, an image without a mask, an empty folder) raises
:class:`~toolkit.data.errors.MRIDataError` (a ValueError) or FileNotFoundError naming the file.
``discover_mri_slices(skip_bad_files=True)`` instead drops what it can check from names and
headers and lists it in ``skipped``; pixel-level problems surface when a slice is read
(:func:`~toolkit.data.mri.io.read_slice`), which :class:`~toolkit.data.mri.dataset.MRISegmentationDataset`
does for every slice when it caches.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import MRIDataError
from .channels import CHANNEL_ALIASES, parse_slice_rule, resolve_channels
from .io import CHANNEL_NAMES, IMAGE_EXTENSIONS, MRISlice, figshare_patient, natural_key, open_figshare_mat
from .metadata import METADATA_FILE, patient_group, read_metadata
from .nifti import NIFTI_SOURCES, brain_region, load_nifti
from .pairs import EXT_PATTERN, find_image_mask_pairs, pair_files
from .raw import DATASET_JSON, check_grid, find_raw, read_dataset_json

__all__ = ["BRATS_FILE", "Discovery", "discover_mri_slices", "given_folder"]

LGG_ROOT = "kaggle_3m"  # the Kaggle LGG download's layout root, inside the folder a user names

_EXT = EXT_PATTERN
#: A BraTS case folder's file: ``<case>_<modality>.nii[.gz]`` (group 1: the modality, or "seg").
BRATS_FILE = re.compile(r"[_-](flair|t2f|t1|t1n|t1ce|t1c|t2|t2w|seg)\.nii(\.gz)?$", re.IGNORECASE)
_LAYOUTS = {
    "folder": f"images/<id>.{_EXT} with masks/<id>_mask.{_EXT} (or masks/<id>.{_EXT}), or <id>.{_EXT} "
              f"beside <id>_mask.{_EXT}",
    "lgg": "[kaggle_3m/]<patient>/<name>_<n>.tif with <patient>/<name>_<n>_mask.tif",
    "figshare_mat": "<id>.mat files (MATLAB v7.3, figshare cjdata struct), in any subfolder",
    "brats": "<case>/<case>_flair.nii.gz (+ t1, t1ce, t2) with <case>/<case>_seg.nii.gz",
    "raw": "dataset.json with imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz (nnU-Net)",
}


class Discovery(NamedTuple):
    """What :func:`discover_mri_slices` found: ``source`` (str), ``root`` (the folder the layout
    sits in), ``slices`` (list of MRISlice in natural order: patient, then slice number) and
    ``skipped`` (list of (path, reason) left out with ``skip_bad_files=True``); ``roots``: all the
    folders read when there are several; ``labels`` (name → label value) and ``regions`` (name →
    list of label values) from a raw layout's dataset.json, None for the other layouts."""

    source: str
    root: Path
    slices: list[MRISlice]
    skipped: list[tuple[Path, str]]
    roots: tuple[Path, ...] = ()  # every folder read (several with :func:`discover_folders`); () = (root,)
    labels: dict[str, int] | None = None
    regions: dict[str, list[int]] | None = None

    @property
    def intensity(self) -> str:
        """How the slices' uint8 intensities were made: "zscore" (NIfTI volumes, z-scored per volume: undo
        with :func:`toolkit.data.batch_transforms.from_zscore_uint8`), "per_slice" (2D files: raw uint8 or
        percentile-scaled per slice) or "mixed" (folders of both kinds: no single preprocess fits)."""
        kinds = {s.source in NIFTI_SOURCES for s in self.slices}
        return "mixed" if len(kinds) > 1 else "zscore" if kinds == {True} else "per_slice"

    @property
    def spacings(self) -> dict[str, tuple[float, float, float]]:
        """Patient (case) → voxel size in mm (X, Y, Z) from its NIfTI header; {} for 2D layouts."""
        return {s.patient: s.spacing for s in self.slices if s.spacing is not None and s.patient is not None}

    @property
    def patients(self) -> list[str]:
        """The distinct patient ids, naturally sorted ([] when the layout has none)."""
        return sorted({s.patient for s in self.slices if s.patient is not None}, key=natural_key)


# --- the four layouts ----------------------------------------------------------------------------------


def _subdirs(root: Path) -> list[Path]:
    dirs = (d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return sorted(dirs, key=lambda d: natural_key(d.name))


def _find_folder(root, channels, rule, skipped):
    ch = resolve_channels("folder", channels)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = find_image_mask_pairs(root, skipped=skipped)
    else:  # masks beside their images: <id>.<ext> + <id>_mask.<ext>
        pairs = pair_files(root, root, skipped)
    meta = read_metadata(root)
    if meta is None:
        return [MRISlice(i, None, "folder", im, m, channels=ch) for i, im, m in pairs]
    missing = [i for i, _, _ in pairs if i not in meta]
    if missing:
        raise MRIDataError(root / METADATA_FILE, f"{len(missing)} of the {len(pairs)} slices have no row, "
                           f"e.g. ids {missing[:5]}; every image id needs one (or remove the file)")
    out = []
    for i, im, m in pairs:
        row = dict(meta[i])
        patient = row.pop("patient_id", "") or None
        row.pop("patient_id_raw", None)
        out.append(MRISlice(i, patient, "folder", im, m, channels=ch, attributes=tuple(sorted(row.items()))))
    return out


def _find_lgg(root, channels, rule, skipped):
    ch, out = resolve_channels("lgg", channels), []
    for d in _subdirs(root):
        pairs = pair_files(d, d, skipped)
        if not pairs:
            reason = "patient folder without any image/mask pair (<name>_<n>.tif + <name>_<n>_mask.tif)"
            if skipped is None:
                raise MRIDataError(d, reason)
            skipped.append((d, reason))
        out += [MRISlice(s if s.startswith(d.name) else f"{d.name}_{s}", d.name, "lgg", im, m, channels=ch)
                for s, im, m in pairs]
    return out


def _find_mat(root, channels, rule, skipped):
    ch, out = resolve_channels("figshare_mat", channels), []
    paths = sorted((p for p in root.rglob("*.mat") if not p.name.startswith(".")),
                   key=lambda p: (natural_key(p.stem), str(p)))
    stems = [p.stem for p in paths]
    for p in paths:
        try:
            with open_figshare_mat(p) as f:
                shapes = f["cjdata/image"].shape, f["cjdata/tumorMask"].shape
                pid = patient_group(figshare_patient(f, p))  # MR024780B, MR024780D: one person
            if shapes[0] != shapes[1] or len(shapes[0]) != 2:
                hw = ["x".join(map(str, sh[::-1])) for sh in shapes]  # HDF5 holds the transpose
                raise MRIDataError(p, f"cjdata/tumorMask is {hw[1]} but cjdata/image is {hw[0]}; "
                                      "a mask must have its image's size")
        except MRIDataError as err:
            if skipped is None:
                raise
            skipped.append((err.path, err.reason))
            continue
        rid = p.stem if stems.count(p.stem) == 1 else p.relative_to(root).with_suffix("").as_posix().replace("/", "_")
        out.append(MRISlice(rid, pid or None, "figshare_mat", p, p, channels=ch))
    return out


def _find_brats(root, channels, rule, skipped):
    ch, (rule, extra), out = resolve_channels("brats", channels), parse_slice_rule(rule), []
    wanted = [CHANNEL_NAMES["brats"][c] for c in ch]
    for d in _subdirs(root):
        files = {}
        for p in d.iterdir():
            m = BRATS_FILE.search(p.name)
            if m:
                files[CHANNEL_ALIASES.get(m.group(1).lower(), m.group(1).lower())] = p
        if not files:
            if not any(d.iterdir()):
                if skipped is None:
                    raise MRIDataError(d, "empty case folder")
                skipped.append((d, "empty case folder"))
            continue  # a folder of other files is no case
        try:
            missing = [n for n in (*wanted, "seg") if n not in files]
            if missing:
                what = "segmentation (<case>_seg.nii.gz): image without a mask" if "seg" in missing else "volume"
                raise MRIDataError(d, f"no {', '.join(missing)} {what} in this case folder")
            shape, spacing = check_grid(d.name, [*(files[n] for n in wanted), files["seg"]])  # as the raw layout
            depth = shape[2]
            keep = list(range(depth))
            if rule != "all":  # per slice: any brain (image != its voxel (0, 0, 0)), any tumour (label > 0)
                brain = brain_region(load_nifti(files[wanted[0]])).any(axis=(0, 1)) if rule == "nonempty" or extra \
                    else None
                tumour = (load_nifti(files["seg"]) > 0).any(axis=(0, 1)) if rule == "tumour" else brain
                keep = np.flatnonzero(tumour).tolist()
                if extra:  # plus N tumour-free brain slices, evenly spaced
                    free = np.flatnonzero(brain & ~tumour)
                    picked = np.linspace(0, len(free) - 1, min(extra, len(free))).round().astype(int)
                    keep = sorted(set(keep) | set(free[picked].tolist()))
        except MRIDataError as err:
            if skipped is None:
                raise
            skipped.append((err.path, err.reason))
            continue
        paths = tuple(files[n] for n in wanted)
        out += [MRISlice(f"{d.name}_z{k:03d}", d.name, "brats", paths[0], files["seg"], k, ch, paths, spacing=spacing)
                for k in keep]
    return out


def given_folder(path: str | Path) -> Path:
    """``path`` resolved, an LGG layout root (``X/kaggle_3m``) as the folder holding it (``X``): both read the same
    slices with the same ids (split.json of runs trained before 3 Dec 2026 holds the layout root)."""
    path = Path(path).resolve()
    return path.parent if path.name == LGG_ROOT else path


_FINDERS = {"folder": _find_folder, "lgg": _find_lgg, "figshare_mat": _find_mat, "brats": _find_brats,
            "raw": find_raw}


def _detect(root: Path) -> dict[str, Path]:
    """The layouts present in ``root``: source → the folder it sits in."""
    found = {}
    if (root / DATASET_JSON).is_file() and (root / "imagesTr").is_dir():
        found["raw"] = root
    names = {p.name.lower() for p in root.iterdir() if p.is_file()}
    beside = any(n.endswith(tuple(f"_mask{e}" for e in IMAGE_EXTENSIONS)) and n.replace("_mask", "") in names
                 for n in names)
    if beside or ((root / "images").is_dir() and (root / "masks").is_dir()):
        found["folder"] = root
    lgg = root / LGG_ROOT if (root / LGG_ROOT).is_dir() else root
    for d in _subdirs(lgg):
        names = {p.name.lower() for p in d.iterdir()} if d.name not in ("images", "masks") else set()
        if any(n.endswith(("_mask.tif", "_mask.tiff")) and n.replace("_mask", "") in names for n in names):
            found["lgg"] = lgg
            break
    if "raw" not in found and any(BRATS_FILE.search(p.name) for d in _subdirs(root) for p in d.iterdir()):
        found["brats"] = root
    if next((p for p in root.rglob("*.mat") if not p.name.startswith(".")), None) is not None:
        found["figshare_mat"] = root
    return found


def _describe(root: Path) -> str:
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    dirs = sorted(p.name + "/" for p in entries if p.is_dir())
    exts: dict[str, int] = {}
    for p in entries:
        if p.is_file():
            exts[p.suffix.lower() or "(none)"] = exts.get(p.suffix.lower() or "(none)", 0) + 1
    if not entries:
        return "nothing (the folder is empty)"
    files = ", ".join(f"{n} {e}" for e, n in sorted(exts.items())) or "none"
    more = " ..." if len(dirs) > 8 else ""
    return f"{len(dirs)} folder(s) {dirs[:8]}{more} and {sum(exts.values())} file(s) ({files})"


def discover_mri_slices(data_dir: str | os.PathLike, *, source: str = "auto", channels=None,
                        slice_rule: str | None = None, skip_bad_files: bool = False) -> Discovery:
    """Detect the layout of ``data_dir`` (see the module docstring) and list its slices.

    Args:
        source: "auto" (detect; more than one layout present is an error) or one of
            "folder", "lgg", "figshare_mat", "brats", "raw".
        channels: image channels to read, resolved per source against ``CHANNEL_NAMES``:
            None = the default (folder: one grey channel; lgg: flair; figshare_mat: its one
            channel; brats: flair; raw: ALL of dataset.json's channel_names, as nnU-Net);
            "all" (or "rgb"); "grey" (folder); names (raw: case-insensitive channel_names) or
            indices as a list or comma-separated string ("flair,t1ce", "0,1"); an int is a
            channel *count* (1 = default, all = every channel), as the ``in_channels`` setting;
            0 = what the data has: every channel (lgg, brats, raw), one grey channel (folder).
        slice_rule: NIfTI volumes only (other layouts accept None or "all"): "nonempty" (default)
            keeps slices with brain (raw: the brain mask when there is one; else the first channel
            differs from its voxel (0, 0, 0)), "tumour" those whose mask
            has a tumour, "tumour+N" those plus N tumour-free brain slices per case, evenly
            spaced, and "all" every slice. "tumor" works too. Every rule but "all" decompresses
            one volume per case here (flair for "nonempty", seg for "tumour", both for "+N").
        skip_bad_files: leave out images without a mask, unreadable .mat/NIfTI headers, volumes
            of mismatched shapes (or affines, raw), missing channel files, empty patient folders,
            listing them in ``skipped``, instead of raising (a bad dataset.json still raises).

    Returns a :class:`Discovery` (source, root, slices, skipped; labels, regions for raw). Raises
    FileNotFoundError when ``data_dir`` is missing or no layout is recognised (the message lists what
    the folder holds), ValueError for an ambiguous folder or bad option, MRIDataError /
    FileNotFoundError naming a bad file, and ValueError when no slice is left.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"MRI data folder {root} does not exist or is not a folder")
    expected = "; ".join(f"{k}: {v}" for k, v in _LAYOUTS.items())
    if source == "auto":
        found = _detect(root)
        if not found:
            raise FileNotFoundError(f"no brain-MRI layout recognised in {root}; it holds {_describe(root)}. "
                                    f"Expected one of: {expected}")
        if len(found) > 1:
            raise ValueError(f"{root} holds more than one MRI layout ({', '.join(found)}); pass source= one of them "
                             "or point the data folder at one")
        source, root = next(iter(found.items()))
    elif source not in _FINDERS:
        raise ValueError(f"source must be auto, {', '.join(_FINDERS)}; got {source!r}")
    elif source == "lgg" and (root / LGG_ROOT).is_dir():
        root = root / LGG_ROOT
    if source not in NIFTI_SOURCES and slice_rule not in (None, "all"):
        raise ValueError(f"slice_rule={slice_rule!r} applies to NIfTI volumes (brats, raw); {source} slices are "
                         "all kept")
    skipped: list[tuple[Path, str]] | None = [] if skip_bad_files else None
    slices = _FINDERS[source](root, channels, slice_rule, skipped)
    if not slices:
        raise ValueError(f"no usable {source} slices in {root} ({expected}); "
                         + (f"skipped {len(skipped)}: {skipped[:3]}" if skipped else "nothing matched"))
    spec = read_dataset_json(root) if source == "raw" else None
    return Discovery(source, root, slices, skipped or [], labels=spec.labels if spec else None,
                     regions=spec.regions if spec else None)
