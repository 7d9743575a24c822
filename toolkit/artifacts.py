"""The run's model as one W&B artifact, logged at the end of every fit (online and offline).

:class:`ModelArtifact` is a fit callback that :class:`~toolkit.trainer.Trainer` appends after the
recipe's own callbacks, so files they write at fit end (``postprocess.json``) are in it. The
artifact ``<run name>-model`` (type ``model``, aliases ``best`` and ``latest``) holds the files
that rebuild the model: see :data:`ARTIFACT_FILES`. Offline, W&B copies them into its staging
folder (``$WANDB_DATA_DIR/artifacts/staging``) and records the artifact in the run file;
``wandb sync`` uploads both. A downloaded artifact folder is a run folder for ``toolkit predict``,
``toolkit evaluate`` and ``toolkit export`` (``--weights <folder>/best.pth``).
"""

from __future__ import annotations

from pathlib import Path

from .callbacks import Callback
from .tracking import run_label, wandb_run

__all__ = ["ModelArtifact", "ARTIFACT_FILES", "WEIGHT_FILES", "artifact_files", "artifact_name"]

WEIGHT_FILES = ("best.pth", "best.safetensors")  # the first that exists goes in
ARTIFACT_FILES = ("config.json", "split.json", "postprocess.json", "target.json", "encoder.json")  # when present
ALIASES = ("best", "latest")


def artifact_name(run_dir: Path) -> str:
    """``<run folder name>-model`` with characters W&B refuses in artifact names replaced by ``-``; a run of a
    driver's folder (:func:`~toolkit.tracking.run_label`), e.g. a CV fold ``runs/<cv>/fold<k>``, is
    ``<cv>-fold<k>-model``."""
    return run_label(run_dir) + "-model"


def artifact_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` that go into its model artifact: the first of :data:`WEIGHT_FILES`
    that exists, then those of :data:`ARTIFACT_FILES` that exist. Empty when there are no weights
    (no epoch finished)."""
    weights = [run_dir / n for n in WEIGHT_FILES if (run_dir / n).is_file()][:1]
    if not weights:
        return []
    return weights + [run_dir / n for n in ARTIFACT_FILES if (run_dir / n).is_file()]


class ModelArtifact(Callback):
    """At fit end the main process logs the run's model artifact to its W&B run (nothing when W&B
    is disabled, on other processes, or without weights). Metadata: recipe, monitor, best value
    and epoch, epochs completed."""

    def on_fit_end(self, trainer, state) -> None:
        run = wandb_run(trainer.accelerator)
        files = artifact_files(trainer.run_dir)
        if run is None or not files:
            return
        import wandb

        loop = trainer.loop
        meta = {"recipe": trainer.recipe, "monitor": loop.monitor if loop else None, "best_value": state.best,
                "best_epoch": state.best_epoch, "epochs_completed": state.epoch}
        artifact = wandb.Artifact(name=artifact_name(trainer.run_dir), type="model", metadata=meta,
                                  description=f"weights and config of the {trainer.recipe} run {trainer.run_dir.name}")
        for path in files:
            artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact, aliases=list(ALIASES))
        trainer.accelerator.print(f"W&B model artifact {artifact.name}: {', '.join(p.name for p in files)}")
