"""Several brain-MRI data folders in one run: ``--data-dir A,B``.

Each folder is auto-detected on its own (:func:`~toolkit.data.mri.discover.discover_mri_slices`).
Slice ids are kept apart per folder: with more than one folder every id gets its folder's
name as a prefix (``brain-mri-figshare/17``), so two folders may both hold an id ``17``. Patient
ids are not prefixed: a patient whose slices sit in two folders (the two figshare folders share
79 patients) is one unit for every split. Volumes are not merged: a NIfTI case or LGG patient folder is keyed
by its folder tag and name (:func:`~toolkit.data.mri.context.slice_key`), so two folders' same-named cases
stay two volumes; :func:`shared_patients` names such patients so a run can say so.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from .discover import Discovery, discover_mri_slices

__all__ = ["parse_data_dirs", "discover_folders", "folder_tags", "shared_patients"]


def parse_data_dirs(value: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """``"A,B"`` (or a list) → [Path("A"), Path("B")]; blanks dropped, order kept. Raises DataError when empty
    or when a folder is given twice."""
    parts = value.split(",") if isinstance(value, str) else [os.fspath(v) for v in ([value] if isinstance(
        value, os.PathLike) else value)]
    dirs = [Path(p.strip()) for p in parts if str(p).strip()]
    if not dirs:
        raise DataError(f"no data folder given in {value!r}")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise DataError(f"a data folder is given twice in {value!r}")
    return dirs


def folder_tags(dirs: Sequence[Path]) -> list[str]:
    """The id prefix of each folder: its name, with ``-2``, ``-3`` … added where two folders share a name."""
    tags, seen = [], {}
    for d in dirs:
        name = d.resolve().name or "data"
        seen[name] = seen.get(name, 0) + 1
        tags.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return tags


def discover_folders(data_dirs: str | os.PathLike | Sequence[str | os.PathLike], **options) -> Discovery:
    """Discover every folder of ``data_dirs`` (see :func:`parse_data_dirs`) and join their slices.

    ``options`` go to :func:`~toolkit.data.mri.discover.discover_mri_slices` for each folder. One folder:
    its :class:`Discovery` unchanged. Several: ids prefixed with :func:`folder_tags`, ``source`` the
    folders' sources joined by ``+`` where they differ, ``root`` the first folder's layout root and ``roots``
    the folders as given (reading them again gives the same ids; a layout root such as ``kaggle_3m/`` would
    change the prefixes), ``labels``/``regions`` the folders' (which must agree). Raises DataError when the folders'
    slices have different numbers of channels or the folders declare different labels or regions.
    """
    dirs = parse_data_dirs(data_dirs)
    found = [discover_mri_slices(d, **options) for d in dirs]
    if len(found) == 1:
        return found[0]._replace(roots=(found[0].root,))
    channels = {f.root: f.slices[0].num_channels for f in found}
    if len(set(channels.values())) > 1:
        raise DataError("the data folders give different numbers of image channels: "
                        + ", ".join(f"{root}: {n}" for root, n in channels.items()) + "; pick matching channels")
    for field in ("labels", "regions"):  # label maps must mean the same in every folder
        declared = {f.root: getattr(f, field) for f in found}
        if len({repr(v) for v in declared.values()}) > 1:
            raise DataError(f"the data folders declare different {field}: "
                            + "; ".join(f"{root}: {v}" for root, v in declared.items()) + "; they must agree")
    slices = [dataclasses.replace(s, id=f"{tag}/{s.id}") for tag, f in zip(folder_tags(dirs), found) for s in f.slices]
    sources = list(dict.fromkeys(f.source for f in found))
    return Discovery("+".join(sources), found[0].root, slices, [s for f in found for s in f.skipped],
                     tuple(dirs), found[0].labels, found[0].regions)


def shared_patients(slices: Sequence) -> dict[str, list[str]]:
    """{patient: folder tags, sorted} for the patients of MRISlice ``slices`` (ids ``<tag>/<id>``, as
    :func:`discover_folders` gives for several folders) found in more than one folder; {} for one folder."""
    tags: dict[str, set[str]] = {}
    for s in slices:
        tag = str(s.id).rpartition("/")[0]
        if s.patient is not None and tag:
            tags.setdefault(s.patient, set()).add(tag)
    return {p: sorted(t) for p, t in sorted(tags.items()) if len(t) > 1}
