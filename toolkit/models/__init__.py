"""The model families; a recipe builds its model from the names exported here (lazily, on first use).

- :mod:`.classifiers`: ``CIFARResNet``, ``CIFARFastNet``, ``build_classifier``, ``cifar_classifier``,
  ``predict_proba``, ``whiten_init_`` (CIFAR-10);
- :mod:`.stl10`: ``STL10CNN``, ``STL10AutoEncoder``, ``FrozenEncoderClassifier``, ``freeze``,
  ``frozen_resnet18``, ``linear_probe_head``, ``load_encoder``, ``probe_classifier``
  (STL-10 supervised, pretraining, probes);
- :mod:`.autoencoders`: ``LinearAutoEncoder``, ``AutoEncoder_CNN``, ``build_autoencoder`` (MNIST);
- :mod:`.segmentation`: ``SegAutoEncoder``, ``SMPUnet``, ``build_segmentation_model``, ``parse_widths``, ``size_multiple`` (brain MRI);
- :mod:`.registry`: ``MODEL_BUILDERS``, ``build_run_model``, ``run_config`` (a run's model from its config.json);
- :mod:`.utils`: ``count_parameters``, ``init_from``, ``meta_parameter_count``, ``check_param_budget``.

A model is a plain ``torch.nn.Module``: uint8-to-float preprocessing belongs to the objective
(:mod:`toolkit.objectives`), not to the model.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "autoencoders": ["AutoEncoder_CNN", "LinearAutoEncoder", "build_autoencoder"],
    "classifiers": ["CIFARResNet", "CIFARFastNet", "build_classifier", "cifar_classifier", "predict_proba",
                    "whiten_init_"],
    "segmentation": ["SMPUnet", "SegAutoEncoder", "build_segmentation_model", "parse_widths", "size_multiple"],
    "stl10": ["FrozenEncoderClassifier", "STL10AutoEncoder", "STL10CNN", "freeze", "frozen_resnet18",
              "linear_probe_head", "load_encoder", "probe_classifier"],
    "registry": ["MODEL_BUILDERS", "build_run_model", "run_config"],
    "utils": ["check_param_budget", "count_parameters", "init_from", "meta_parameter_count"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
