"""Brain-MRI slices without their masks, for self-supervised pretraining (recipes/brain_mri_pretrain.py).

- :class:`MRIImageDataset`: the slices of any layout :func:`~toolkit.data.mri.discover_folders` finds,
  as uint8 images only;
- :func:`exclude_split`: leave out the patients of a run's validation/test split, so that a model
  pretrained here and fine-tuned on that split is still tested on images it never saw;
- :func:`unit_input_scale`: images in [0, 1] to the input scale of a segmentation model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import DataError

__all__ = ["MRIImageDataset", "exclude_split", "unit_input_scale"]


class MRIImageDataset(torch.utils.data.Dataset):
    """The images of MRI slice records, read (and cached) at ``size`` x ``size``; masks unused.

    ``records``: :class:`~toolkit.data.mri.MRISlice` records; ``size``, ``skip_bad_files``,
    ``transform``: as :class:`~toolkit.data.mri.MRISegmentationDataset` (which reads them). ``dataset[i]``
    is a ``torch.uint8`` image (C, size, size) 0..255 (NIfTI: z-scored per volume, 2D: scaled per
    slice). ``skipped`` lists (path, reason) of the slices left out.
    """

    def __init__(self, records: Sequence, size: int = 240, skip_bad_files: bool = False, transform=None) -> None:
        from .mri import MRISegmentationDataset

        self.slices = MRISegmentationDataset(records, size=size, skip_bad_files=skip_bad_files, transform=transform)
        self.skipped = self.slices.skipped

    @property
    def ids(self) -> list[str]:
        """The slice ids, in dataset order."""
        return self.slices.ids

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.slices[i][0]

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation (see :meth:`MRISegmentationDataset.reseed`)."""
        self.slices.reseed(seed)


def exclude_split(records: Sequence, path: str | os.PathLike, names: Sequence[str] = ("val", "test")) -> tuple[list, int]:
    """Drop from ``records`` every slice of the ``names`` splits of a split file (a run's split.json)
    and every other slice of their patients; returns (kept records in order, number dropped).

    Records are anything with ``id`` and ``patient`` attributes. Slices without a patient id are
    matched by id only; an id ``folder/x`` (several data folders) also matches ``x`` in the file, so more
    is left out rather than less. Raises FileNotFoundError for a missing file and DataError when the file holds
    none of ``names`` or none of their ids are among ``records`` (a split saved for other data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exclude split: {path} is not a file (expected a run's split.json)")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:  # not JSON, or not text
        raise DataError(f"{path} is not a split file (a run's split.json): not readable as JSON ({err})") from None
    data = data if isinstance(data, dict) else {}
    ids = {i for name in names if isinstance(data.get(name), list) for i in data[name]}
    if not ids:
        raise DataError(f"{path} holds none of the splits {list(names)} (a JSON object of lists of slice ids)")
    records = list(records)

    def listed(r) -> bool:  # with several data folders ids gain a "<folder>/" prefix the split file may lack
        return r.id in ids or r.id.split("/", 1)[-1] in ids

    found = [r for r in records if listed(r)]
    if not found:
        raise DataError(f"{path}: none of the {len(ids)} {'/'.join(names)} ids are among the {len(records)} slices "
                        f"found, e.g. {sorted(ids)[:3]}; was it saved for other data folders?")
    patients = {r.patient for r in found if r.patient is not None}
    kept = [r for r in records if not listed(r) and (r.patient is None or r.patient not in patients)]
    return kept, len(records) - len(kept)


def unit_input_scale(intensity: str = "per_slice") -> Callable[[torch.Tensor], torch.Tensor]:
    """Float images (N, C, H, W) in [0, 1] (uint8 / 255) -> the float32 input the segmentation recipe gives
    the model for data stored with ``intensity`` (see :func:`~toolkit.data.input_preprocess`):
    "per_slice" -> zero mean, unit std per image and channel; "zscore" -> z = x * 2 * ZSCORE_CLIP - ZSCORE_CLIP
    in [-4, 4]. Raises ValueError for another value."""
    from .batch_transforms import input_preprocess, standardize_per_image

    input_preprocess(intensity)  # the same check and message
    if intensity == "per_slice":
        return standardize_per_image
    return _zscore_from_unit


def _zscore_from_unit(x: torch.Tensor) -> torch.Tensor:
    from .mri.nifti import ZSCORE_CLIP

    return x.float() * (2.0 * ZSCORE_CLIP) - ZSCORE_CLIP
