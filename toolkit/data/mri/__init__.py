"""Brain-MRI slices for segmentation.

- :mod:`.io`: the :class:`~.io.MRISlice` record and the readers (2D files, figshare .mat);
- :mod:`.nifti`: NIfTI volumes, their per-volume z-score intensities and label maps;
- :mod:`.raw`: the nnU-Net / Decathlon raw layout (dataset.json, imagesTr, labelsTr);
- :mod:`.channels`: which channels and slices of a source to read;
- :mod:`.discover`: layout detection and the list of slices (:func:`~.discover.discover_mri_slices`);
- :mod:`.dataset`: :class:`~.dataset.MRISegmentationDataset`, uint8 slices and masks for a DataLoader;
- :mod:`.augment`: albumentations presets applied jointly to a slice and its mask;
- :mod:`.synthetic` / :mod:`.synthetic_render`: the synthetic demo set on disk, and one drawn slice.

Splits are :mod:`toolkit.data.splits`; on-device normalisation :mod:`toolkit.data.batch_transforms`.

Exported here (lazily, on first use): ``discover_folders`` (one or several data folders, each
auto-detected), ``discover_mri_slices``, ``find_image_mask_pairs``, ``Discovery``, ``parse_data_dirs``,
``shared_patients``,
``read_metadata``; ``AttributeClasses``, ``attribute_classes`` (classes from a metadata column); ``MRISlice``, ``read_slice``; ``MRISegmentationDataset``; ``mri_train_transforms``,
``mri_augmentation``, ``mri_eval_transforms``; ``generate_synthetic_mri``, ``generate_synthetic_volumes``; ``ZSCORE_CLIP``; ``RawCase``, ``RawSpec``, ``raw_cases``,
``raw_case_slices``, ``read_dataset_json``.
"""

from ...lazy import lazy_exports

_EXPORTS = {
    "augment": ["mri_augmentation", "mri_eval_transforms", "mri_train_transforms"],
    "classes": ["AttributeClasses", "attribute_classes"],
    "dataset": ["MRISegmentationDataset"],
    "discover": ["Discovery", "discover_mri_slices"],
    "pairs": ["find_image_mask_pairs"],
    "folders": ["discover_folders", "parse_data_dirs", "shared_patients"],
    "io": ["MRISlice", "read_slice"],
    "metadata": ["read_metadata"],
    "nifti": ["ZSCORE_CLIP"],
    "raw": ["RawCase", "RawSpec", "raw_case_slices", "raw_cases", "read_dataset_json"],
    "synthetic": ["generate_synthetic_mri"],
    "synthetic_volumes": ["generate_synthetic_volumes"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
