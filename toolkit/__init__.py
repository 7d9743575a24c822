"""toolkit: a training toolkit on Hugging Face Accelerate for autoencoders and image segmentation.

Public names are imported lazily (PEP 562), so ``import toolkit`` stays cheap and a
submodule's heavy dependencies load only when one of its names is used.
"""

from __future__ import annotations

import importlib
import os as _os

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would call the network on import

_EXPORTS = {
    "checkpoint": ["load_weights", "save_weights"],
    "config": ["ConfigError", "TrainConfig", "parse_config"],
    "data.batch_transforms": ["add_gaussian_noise"],
    "data.mri.augment": ["mri_train_transforms"],
    "data.mri.dataset": ["MRISegmentationDataset"],
    "data.mri.discover": ["discover_mri_slices", "find_image_mask_pairs"],
    "data.mri.io": ["MRISlice", "read_slice"],
    "data.mri.synthetic": ["generate_synthetic_mri"],
    "data.splits": ["load_split", "save_split", "split_ids", "split_records"],
    "figures": ["image_grid", "plot_history", "segmentation_overlays"],
    "losses": ["DiceBCELoss", "SoftDiceLoss"],
    "metrics": ["Accuracy", "ReconstructionMetrics", "SegmentationMetrics"],
    "models.segmentation": ["SegAutoEncoder", "build_segmentation_model"],
    "models.utils": ["count_parameters"],
    "objectives": [
        "ClassificationObjective", "DenoisingObjective", "Objective", "ReconstructionObjective",
        "SegmentationObjective", "StepOutput", "build_objective",
    ],
    "trainer": ["ParameterBudgetError", "Trainer"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
