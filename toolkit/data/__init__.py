"""The data layer: loaders that keep images uint8 until the device, splits, and on-device batch ops.

- :mod:`.cifar`, :mod:`.stl10`, :mod:`.mnist`: the classification and autoencoder data sets;
- :mod:`.mri`: brain-MRI slices for segmentation (readers, layouts, dataset, augmentation, synthetic set);
- :mod:`.splits`: every seeded split (patient-safe MRI splits, split files, random hold-outs);
- :mod:`.batch_transforms`: every on-device batch operation (normalisation, crops, flips, noise);
- :mod:`.errors`: :class:`~.errors.DataError` and its subclasses.

It imports nothing from :mod:`toolkit.config`, :mod:`toolkit.trainer` or :mod:`toolkit.objectives`:
recipes turn a DataError into a ConfigError at their boundary.
"""
