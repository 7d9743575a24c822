"""``toolkit export``: a run's trained model as ONNX or TorchScript, for serving without this toolkit.

The exported graph is the model alone: float32 input (N, C, H, W) with a dynamic batch size N (and, for a
segmentation model exported to ONNX whose slice side S is a multiple of the model's ``size_multiple``, dynamic
H and W: any multiples of it, metadata ``dynamic_size_multiple``, so the ONNX predict can run the stored scale
TTA; TorchScript traces one size), its raw output (logits for classifiers and segmentation, [0, 1]
reconstructions for autoencoders).
The uint8 → float preprocessing of the run is NOT in the graph; the file's metadata says what it is
(ONNX ``metadata_props``, TorchScript ``_extra_files["metadata.json"]``; every value JSON text),
with, for segmentation runs, ``intensity`` (``per_slice`` or ``zscore``), ``image_size``,
``in_channels``, ``channels``, ``layout`` (the data layout the channels refer to), ``target_spec`` and
the post-processing ``threshold`` (the run's ``postprocess.json``, else its config threshold; the config's
alone is ``run_threshold``, what ``--postprocess none`` uses), and ``postprocess_volume``, the 3D rule of
``postprocess.json`` when it has one (the ONNX predict applies it to LGG patient folders). :func:`read_metadata`
reads either format back.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import atomic_write
from .models.registry import WEIGHT_NAMES, build_run_model, run_config

__all__ = ["FORMATS", "export_model", "load_run_model", "read_metadata", "run_exported", "max_abs_difference"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format → suffix of the default output file
RUN_RECORDS = ("config.json", "split.json", "postprocess.json", "target.json", "encoder.json", "summary.json",
               "history.json")  # files beside the weights that --output must not replace
METADATA_FILE = "metadata.json"  # TorchScript extra file holding the metadata
EXAMPLE_BATCH = 2  # batch of the example input; the exported batch dimension stays dynamic


def _weights_file(weights: str | Path) -> Path:
    path = Path(weights)
    if path.is_dir():
        found = [path / n for n in WEIGHT_NAMES if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no {' or '.join(WEIGHT_NAMES)}: --weights must be a run's best.pth")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def _segmentation(weights: Path) -> tuple[nn.Module, tuple[int, int, int], dict[str, Any]]:
    from .inference import load_segmentation_run, pick_postprocess, run_layout, trained_with_flips
    from .postprocess import POSTPROCESS_FILE, load_volume_key

    model, cfg = load_segmentation_run(weights)
    if int(cfg.get("context_slices", 0)):
        raise ValueError(f"{weights}: a 2.5D run (context_slices {cfg['context_slices']}) needs a slice's neighbours, "
                         f"which the exported single-image model cannot be given; predict with toolkit predict")
    post_file = weights.parent / POSTPROCESS_FILE
    post, source = pick_postprocess(post_file if post_file.is_file() else None, cfg)
    volume = load_volume_key(post_file) if post_file.is_file() else None  # the 3D rule (LGG folders: predict's)
    size, c = int(cfg["image_size"]), int(cfg.get("in_channels", 1))
    meta = {"kind": "segmentation", "preprocess": cfg["intensity"], "intensity": cfg["intensity"],
            "image_size": size, "in_channels": c, "channels": cfg.get("channels") or "",
            "layout": run_layout(weights.parent), "flip_trained": trained_with_flips(cfg),  # how predict resizes back
            "target_spec": cfg["target_spec"], "threshold": post.threshold, "threshold_from": source,
            "run_threshold": pick_postprocess(None, cfg, mode="none")[0].threshold,  # what --postprocess none uses
            "postprocess": post.to_dict(), **({"postprocess_volume": volume} if volume else {}),
            "output": f"logits (N, out_channels, {size}, {size}); probabilities: the target_spec's sigmoid "
                      f"(binary, regions) or softmax (classes)"}
    return model, (c, size, size), meta


def load_run_model(weights: str | Path) -> tuple[nn.Module, tuple[int, int, int], dict[str, Any]]:
    """The trained model of a run (eval mode), its input shape (C, H, W) and the metadata to export with it.

    weights: a run's ``best.pth`` / ``best.safetensors`` (``config.json`` beside it) or the run folder.
    Segmentation runs (brain_mri) load through :func:`toolkit.inference.load_segmentation_run`,
    the others through :data:`toolkit.models.registry.MODEL_BUILDERS`. Raises FileNotFoundError /
    ValueError naming the file.
    """
    weights = _weights_file(weights)
    cfg = run_config(weights)
    if cfg.get("recipe") == "brain_mri":
        model, shape, meta = _segmentation(weights)
    else:
        model, entry = build_run_model(weights, cfg)
        shape = tuple(int(d) for d in entry.input_shape(cfg))
        meta = {"kind": entry.kind, "preprocess": entry.preprocess,
                "output": {"classifier": "logits (N, 10)",
                           "restoration": f"logits (N, 1, {shape[1]}, {shape[2]}); sigmoid = the restored image in [0, 1]",
                           }.get(entry.kind, f"reconstructions (N, {shape[0]}, {shape[1]}, {shape[2]}) in [0, 1]")}
    meta = {"recipe": cfg.get("recipe"), "weights": weights.name, "input": f"float32 (N, {shape[0]}, {shape[1]}, "
            f"{shape[2]}), N dynamic", "input_shape": list(shape), "preprocess_in_graph": False, **meta}
    return model, shape, meta


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str], multiple: int = 0) -> None:
    """``multiple`` > 0: H and W of the graph are dynamic, any multiples of it (the example's must be)."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError as err:
        raise ValueError(f"--format onnx needs onnx and onnxscript: pip install -e '.[export]' ({err})") from None
    dims = {0: torch.export.Dim("batch", min=1)}
    if multiple:  # the models pad H, W up to a multiple inside; at multiples the padding is none, in every graph
        dims.update({2: multiple * torch.export.Dim("height", min=1), 3: multiple * torch.export.Dim("width", min=1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["output"],
                                    dynamo=True, dynamic_shapes=(dims,), external_data=False, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape-dependent Python code in the models
        traced = torch.jit.trace(model, (example,))
        extra = {METADATA_FILE: json.dumps(meta)}  # torch.jit is deprecated in favour of torch.export, still works
        atomic_write(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))


def export_model(weights: str | Path, fmt: str, output: str | Path | None = None,
                 check: bool = True) -> tuple[Path, dict[str, Any], float | None]:
    """Export the model of a run's ``weights`` as ``fmt`` (``onnx`` or ``torchscript``) to ``output``
    (default: the weights' path with suffix ``.onnx`` / ``.pt``), atomically.

    With ``check`` the exported file is run (onnxruntime / ``torch.jit.load``) on a random float32 batch
    of 3 (another batch size than the export's example), and a graph of dynamic H, W also on one scan of
    other sides, and compared with PyTorch. Returns (output path, metadata, max abs difference or None when
    unchecked or onnxruntime is missing).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    model, shape, meta = load_run_model(weights)
    weights = _weights_file(weights)
    out = Path(output) if output else weights.with_suffix(FORMATS[fmt])
    kept = {(weights.parent / n).resolve() for n in (*WEIGHT_NAMES, *RUN_RECORDS)} | {weights.resolve()}
    if out.resolve() in kept:  # the run's weights, config.json, split.json ... that rebuild the model
        raise ValueError(f"--output {out} would overwrite a file of the run (its weights or records); "
                         f"give another file name")
    m = int(getattr(model, "size_multiple", 0)) if meta["kind"] == "segmentation" else 0  # sides without padding
    dynamic = m if fmt == "onnx" and m and shape[1] % m == 0 and shape[2] % m == 0 else 0
    if dynamic:  # written only when true: its absence means S x S alone (TorchScript, older exports, smp at 240)
        meta["dynamic_size_multiple"] = dynamic
        meta["input"] = f"float32 (N, {shape[0]}, H, W), N dynamic, H and W any multiples of {dynamic} (the run: " \
                        f"{shape[1]} x {shape[2]})"
    props = {k: json.dumps(v) for k, v in meta.items()}
    example = torch.randn(EXAMPLE_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        _export_onnx(model, example, out, props, dynamic)
    else:
        _export_torchscript(model, example, out, props)
    diff = None
    if check:
        gen = torch.Generator().manual_seed(1)
        inputs = [torch.randn(3, *shape, generator=gen)]
        if dynamic:  # one scan a multiple taller and two wider than the run's slices
            inputs.append(torch.randn(1, shape[0], shape[1] + dynamic, shape[2] + 2 * dynamic, generator=gen))
        try:
            diff = max(max_abs_difference(out, model, x) for x in inputs)
        except ImportError:
            diff = None
    return out, meta, diff


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file (``.onnx`` or TorchScript), values decoded from JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        extra = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        if not extra[METADATA_FILE]:
            raise ValueError(f"{path} holds no {METADATA_FILE}: not written by toolkit export")
        props = json.loads(extra[METADATA_FILE])
    return {k: json.loads(v) for k, v in props.items()}


def run_exported(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run an exported file on ``x`` (float32 (N, C, H, W)): onnxruntime on the CPU for ``.onnx``,
    ``torch.jit.load`` otherwise. Returns the model's output as a float32 array."""
    path = Path(path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@torch.no_grad()
def max_abs_difference(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the exported file's output and ``model(x)`` (eval mode)."""
    expected = model.eval()(x).numpy()
    got = run_exported(path, x.numpy())
    if got.shape != expected.shape:
        raise ValueError(f"{path} returns shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())

