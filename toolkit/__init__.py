"""toolkit: a training toolkit on Hugging Face Accelerate for classifiers, autoencoders and image segmentation.

The public API: a recipe imports from ``toolkit`` and the documented subpackages
:mod:`toolkit.data`, :mod:`toolkit.data.mri` and :mod:`toolkit.models`, nothing deeper
(``tests/test_public_api.py`` checks it; ``docs/architecture.md`` says what goes where).
``toolkit`` exports:

- configuration: ``TrainConfig``, ``parse_config``, ``config_help``, ``ConfigError``, ``run_recipe``, ``check_folder_name``;
  ``ClassificationConfig`` and ``classification_objective``, ``stl10_train_test`` (what the classification recipes
  share);
- training: ``Trainer``, ``ParameterBudgetError``, ``TrainState``; callbacks ``Callback``, ``SaveCurve``,
  ``SegmentationMedia``, ``ReconstructionMedia``, ``ChoosePostprocess``, ``ChooseVolumePostprocess``, ``FreezeEncoder``;
- objectives, losses, metrics: ``Objective``, ``StepOutput``, ``ClassificationObjective``,
  ``ReconstructionObjective``, ``DenoisingObjective``, ``RestorationObjective``, ``LesionObjective``,
  ``SegmentationObjective``, ``build_objective``, ``SoftDiceLoss``, ``DiceBCELoss``, ``DiceCELoss``, ``DeepSupervisionLoss``, ``Accuracy``,
  ``ReconstructionMetrics``, ``SegmentationMetrics``;
- segmentation targets (binary, classes, regions): ``TARGET_FILE``, ``TARGET_KINDS``, ``TargetSpec``, ``parse_regions``,
  ``resolve_target``, ``TargetMetrics``, ``segmentation_loss``;
- files and figures: ``save_weights``, ``load_weights``, ``save_json``, ``atomic_write``, ``image_grid``,
  ``plot_history``, ``reconstruction_pairs``, ``save_figure``, ``segmentation_overlays``;
- models: ``build_segmentation_model``, ``parse_widths``, ``size_multiple``, ``SegAutoEncoder``, ``SEGMENTATION_MODELS``,
  ``count_parameters``, ``init_from``,
  ``meta_parameter_count``, ``check_param_budget`` (the other architectures are in :mod:`toolkit.models`);
  ``input_difference`` (what the run of ``--init-from`` weights read, if not this run's channels and intensity scaling),
  ``encoder_parameters`` (the encoder and bottleneck parameters ``--encoder-lr-scale`` scales);
- segmentation evaluation: ``SegmentationEnsemble``, ``PostProcess``, ``train_folds``, ``train_final`` (``check_final``), ``out_of_fold``, ``cv_lines``;
- the label-efficiency curve: ``SSL_ARMS``, ``run_name``, ``score_run``, ``curve_summary``, ``curve_table``,
  ``write_curve``;
- comparison scripts: ``Column``, ``Comparison``, ``ComparisonError``, ``RunResult``, ``check_run_args``,
  ``command_line``, ``driver_help``, ``refuse_flags``, ``split_args``, ``train_run``, ``write_comparison``;
- data names used by most recipes (the full lists are in :mod:`toolkit.data` and :mod:`toolkit.data.mri`):
  ``add_gaussian_noise``, ``load_split``, ``save_split``, ``split_ids``, ``split_records``,
  ``MRISegmentationDataset``, ``MRISlice``, ``read_slice``, ``discover_mri_slices``,
  ``find_image_mask_pairs``, ``generate_synthetic_mri``, ``mri_train_transforms``, ``mri_augmentation``
  (its strength up to ``MAX_AUGMENT_STRENGTH``); the brain-MRI recipes' data (read, split by patient, saved):
  ``segmentation_data``, ``SegmentationData``, ``pretraining_data``, ``choose_monitor``, ``settle_epochs``,
  ``check_mri_settings``;
  2.5D input (``--context-slices``): ``context_channels``, ``MAX_CONTEXT``.

Names are imported lazily (PEP 562), so ``import toolkit`` stays cheap and a submodule's heavy
dependencies load only when one of its names is used.
"""

from __future__ import annotations

import os as _os

from .lazy import lazy_exports

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would call the network on import

_EXPORTS = {
    "callbacks": ["Callback", "SaveCurve"],
    "checkpoint": ["atomic_write", "load_weights", "save_json", "save_weights"],
    "classification": ["ClassificationConfig", "classification_objective", "stl10_train_test"],
    "compare": ["RunResult", "check_run_args", "command_line", "driver_help", "refuse_flags", "split_args",
                "train_run", "write_comparison"],
    "comparison": ["Column", "Comparison", "ComparisonError"],
    "config": ["ConfigError", "TrainConfig", "check_folder_name", "config_help", "parse_config", "run_recipe"],
    "crossval": ["cv_lines", "out_of_fold"],
    "cv_runs": ["check_final", "train_final", "train_folds"],
    "ssl_curve": ["SSL_ARMS", "curve_summary", "curve_table", "run_name", "score_run", "write_curve"],
    "data.batch_transforms": ["add_gaussian_noise"],
    "data.mri.augment": ["mri_train_transforms", "mri_augmentation", "MAX_AUGMENT_STRENGTH"],
    "data.mri.context": ["MAX_CONTEXT", "context_channels"],
    "data.mri.dataset": ["MRISegmentationDataset"],
    "data.mri.discover": ["discover_mri_slices"],
    "data.mri.pairs": ["find_image_mask_pairs"],
    "data.mri.io": ["MRISlice", "read_slice"],
    "data.mri.synthetic": ["generate_synthetic_mri"],
    "data.splits": ["load_split", "save_split", "split_ids", "split_records"],
    "ensemble": ["SegmentationEnsemble"], "finetune": ["FreezeEncoder", "encoder_parameters"], "inference": ["input_difference"],
    "figures": ["image_grid", "plot_history", "reconstruction_pairs", "save_figure", "segmentation_overlays"],
    "losses": ["DeepSupervisionLoss", "DiceBCELoss", "DiceCELoss", "SoftDiceLoss", "segmentation_loss"],
    "metrics": ["Accuracy", "ReconstructionMetrics", "SegmentationMetrics"],
    "mri_data": ["SegmentationData", "check_mri_settings", "choose_monitor", "pretraining_data", "segmentation_data", "settle_epochs"],
    "models.segmentation": ["SEGMENTATION_MODELS", "SegAutoEncoder", "build_segmentation_model", "parse_widths",
                            "size_multiple"],
    "models.utils": ["check_param_budget", "count_parameters", "init_from", "meta_parameter_count"],
    "objectives": [
        "ClassificationObjective", "DenoisingObjective", "LesionObjective", "Objective", "ReconstructionObjective",
        "RestorationObjective", "SegmentationObjective", "StepOutput", "build_objective",
    ],
    "postprocess": ["PostProcess"],
    "seg_eval": ["ChoosePostprocess"],
    "state": ["TrainState"],
    "target_metrics": ["TargetMetrics"],
    "targets": ["TARGET_FILE", "TARGET_KINDS", "TargetSpec", "parse_regions", "resolve_target"],
    "trainer": ["ParameterBudgetError", "Trainer"],
    "volume_postprocess_run": ["ChooseVolumePostprocess"],
    "wandb_media": ["ReconstructionMedia", "SegmentationMedia"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
