"""The data layer: loaders that keep images uint8 until the device, splits, and on-device batch ops.

- :mod:`.cifar`, :mod:`.stl10`, :mod:`.mnist`: the classification and autoencoder data sets;
- :mod:`.mri`: brain-MRI slices for segmentation (readers, layouts, dataset, augmentation, synthetic set);
- :mod:`.splits`: every seeded split (patient-safe MRI splits, split files, random hold-outs);
- :mod:`.batch_transforms`: every on-device batch operation (normalisation, crops, flips, noise);
- :mod:`.errors`: :class:`~.errors.DataError` and its subclasses.

It imports nothing from :mod:`toolkit.config`, :mod:`toolkit.trainer` or :mod:`toolkit.objectives`:
recipes turn a DataError into a ConfigError at their boundary.

Exported here (lazily, on first use), the names a recipe uses:

- data sets: ``load_cifar10``, ``CIFAR10_MEAN``, ``CIFAR10_STD``; ``open_stl10``, ``STL10Memmap``,
  ``STL10_CLASSES``, ``STL10_MEAN``, ``STL10_STD``; ``load_mnist``;
- splits: ``holdout_split``, ``split_ids``, ``split_records``, ``save_split``, ``load_split``, ``label_fraction``;
- self-supervised pretraining (:mod:`.corruptions`, :mod:`.lesions`, :mod:`.unlabeled`): ``Corrupt``,
  ``SyntheticLesions``, ``MRIImageDataset``, ``exclude_split``, ``unit_input_scale``;
- batch transforms: ``Normalize``, ``ResizeNormalize``, ``RandomCropFlip``, ``ForegroundCrop``,
  ``to_unit_range``, ``standardize_per_image``, ``from_zscore_uint8``, ``input_preprocess``, ``add_gaussian_noise``, ``DEFAULT_NOISE_STD``,
  ``IMAGENET_MEAN``, ``IMAGENET_STD``;
- errors: ``DataError``, ``MRIDataError``.

Brain-MRI names are in :mod:`toolkit.data.mri`.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "batch_transforms": ["DEFAULT_NOISE_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ForegroundCrop", "Normalize",
                         "RandomCropFlip", "ResizeNormalize", "add_gaussian_noise", "from_zscore_uint8",
                         "input_preprocess", "standardize_per_image", "to_unit_range"],
    "cifar": ["CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10"],
    "errors": ["DataError", "MRIDataError"],
    "mnist": ["load_mnist"],
    "corruptions": ["Corrupt"], "lesions": ["SyntheticLesions"],
    "unlabeled": ["MRIImageDataset", "exclude_split", "unit_input_scale"],
    "splits": ["holdout_split", "label_fraction", "load_split", "save_split", "split_ids", "split_records"],
    "stl10": ["STL10_CLASSES", "STL10_MEAN", "STL10_STD", "STL10Memmap", "open_stl10"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
