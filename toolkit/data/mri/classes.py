"""Classes from slice metadata: binary tumour masks whose tumour pixels take a per-slice class.

The figshare folders give each slice's ``tumour_type`` in ``metadata.csv`` (meningioma, glioma,
pituitary). :class:`AttributeClasses` turns such a binary data set into a multi-class one: a
slice's tumour pixels get the label value of its class (1..K in the order of ``classes``), the
background stays 0, so a :class:`~toolkit.targets.TargetSpec` of kind ``classes`` can train on it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import MRIDataError
from .io import MRISlice

__all__ = ["AttributeClasses", "attribute_classes"]


def attribute_classes(records: Sequence[MRISlice], column: str) -> list[str]:
    """The sorted distinct values of metadata ``column`` over ``records``.

    Raises ValueError naming the column and the columns the records do have when a record lacks it.
    """
    values = set()
    for r in records:
        attrs = r.attrs
        if column not in attrs or not attrs[column]:
            have = sorted(attrs) or ["none: the data folder has no metadata.csv with more than id,patient_id"]
            raise ValueError(f"class column {column!r} is missing for slice {r.id} ({r.image_path}); "
                             f"its metadata columns: {', '.join(have)}")
        values.add(attrs[column])
    return sorted(values)


class AttributeClasses(Dataset):
    """Wrap a binary segmentation dataset so that tumour pixels carry the slice's class label.

    Args:
        dataset: a dataset of (image uint8 (C, S, S), mask uint8 (1, S, S) {0, 1}) pairs with a
            ``records`` list of :class:`MRISlice` (e.g. :class:`MRISegmentationDataset`).
        column: the metadata attribute holding each slice's class (e.g. "tumour_type").
        classes: the class names in label order: class ``classes[k]`` gets label value k + 1.

    ``dataset[i]`` is (image unchanged, mask uint8 (1, S, S) with values {0, k + 1}). Other
    attributes (``ids``, ``records``, ``reseed`` ...) are the wrapped dataset's. Raises
    MRIDataError naming the slice when its class is not in ``classes``.
    """

    def __init__(self, dataset, column: str, classes: Sequence[str]) -> None:
        self.dataset, self.column, self.classes = dataset, column, list(classes)
        self.values = []
        for r in dataset.records:
            name = r.attrs.get(column)
            if name not in self.classes:
                raise MRIDataError(r.image_path, f"slice {r.id} has {column}={name!r}, not one of the run's "
                                                 f"classes {self.classes}")
            self.values.append(self.classes.index(name) + 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        return image, mask * self.values[i]

    def __getattr__(self, name: str):
        if name == "dataset":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
