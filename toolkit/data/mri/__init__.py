"""Brain-MRI slices for segmentation.

- :mod:`.io`: the :class:`~.io.MRISlice` record and the readers (2D files, figshare .mat, NIfTI);
- :mod:`.channels`: which channels and slices of a source to read;
- :mod:`.discover`: layout detection and the list of slices (:func:`~.discover.discover_mri_slices`);
- :mod:`.dataset`: :class:`~.dataset.MRISegmentationDataset`, uint8 slices and masks for a DataLoader;
- :mod:`.augment`: albumentations presets applied jointly to a slice and its mask;
- :mod:`.synthetic` / :mod:`.synthetic_render`: the synthetic demo set on disk, and one drawn slice.

Splits are :mod:`toolkit.data.splits`; on-device normalisation :mod:`toolkit.data.batch_transforms`.
"""
