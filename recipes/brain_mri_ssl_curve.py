"""The label-efficiency curve: pretrained vs from-scratch brain-MRI segmentation at several label fractions.

    make ssl-curve ARGS="--data-dir A,B --test-data-dir C"
    LAUNCH="accelerate launch --cpu" python recipes/brain_mri_ssl_curve.py --data-dir A,B --fractions 0.1,1 \\
        --seeds 0 --pretrain-minutes 15 --finetune-minutes 10 --epochs 200       # --epochs goes to brain_mri.py

Pretrains once (recipes/brain_mri_pretrain.py into ``<output-dir>/<name>/pretrain/``, or reuses ``--pretrained``),
then for each fraction F and seed S trains recipes/brain_mri.py twice with the same settings and minutes,
``--init-from`` the pretrained weights and from scratch, into ``<output-dir>/<name>/f<F>-s<S>-{pretrained,scratch}/``.
Every argument this script does not know goes to every brain_mri.py run; the data and architecture ones among
them (widths, image size, channels, ...) also go to the pretraining; ``--pretrain-args`` go to the pretraining
only; ``--freeze-encoder-epochs`` and ``--encoder-lr-scale`` only to the pretrained arm. A finished run is reused
and an interrupted one resumed, so a killed curve continues when the same command runs again. Each run's best.pth
is scored by per-image Dice (toolkit.ssl_curve.score_run: ``--test-data-dir`` if given, else the run's test
split, else its validation split) and the curve is written as ssl_curve.{json,md,png} and comparison.json, and logged to the
W&B group ``<name>`` unless W&B is disabled.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from brain_mri import BrainMRIConfig  # the recipes beside this script
from brain_mri_pretrain import BrainMRIPretrainConfig
from toolkit import SSL_ARMS, ConfigError, command_line, config_help, curve_summary, curve_table, parse_config, run_name
from toolkit import check_folder_name, check_run_args, run_recipe, score_run, split_args, train_run, write_curve
from toolkit.data.mri import discover_folders

HERE = Path(__file__).resolve().parent
FINETUNE, PRETRAIN = HERE / "brain_mri.py", HERE / "brain_mri_pretrain.py"
SET_HERE = {"run-name", "output-dir", "init-from", "label-fraction", "seed", "max-minutes", "resume"}
SET_IN_PRETRAIN = {"run-name", "output-dir", "max-minutes", "resume"}  # what the curve gives the pretraining
TO_PRETRAIN = {"channels", "slice-rule", "skip-bad-files", "synthetic-dir", "synthetic-images", "image-size",
               "in-channels", "model", "widths", "param-budget", "num-workers", "batch-size", "channels-last",
               "wandb-mode", "wandb-project"}  # data and architecture: the pretrained weights must fit the runs
PRETRAINED_ONLY = {"freeze-encoder-epochs", "encoder-lr-scale"}


@dataclass
class SSLCurveConfig:
    """Label-efficiency curve of self-supervised pretraining (restoration or synthetic lesions) on brain MRI (issue 14)."""

    data_dir: str = ""  # MRI data folder(s), comma-separated, for pretraining and fine-tuning; "" = synthetic
    test_data_dir: str = ""  # folder(s) of patients outside data_dir, all scored; "" = each run's test split, else val
    name: str = "ssl-curve"  # the curve's folder under output_dir (and its W&B group)
    output_dir: str = "runs"  # parent folder of the curve's folder
    fractions: str = "0.05,0.1,0.25,1.0"  # label fractions: shares of the training patients, comma-separated
    seeds: str = "0,1,2"  # seeds (split and labelled patients), comma-separated ints; each fraction runs every seed
    pretrain_minutes: float = 15.0  # wall-clock budget of the pretraining, minutes (> 0)
    finetune_minutes: float = 10.0  # wall-clock budget of every fine-tuning and scratch run, minutes (> 0)
    pretrained: str = ""  # reuse these pretrained weights (a brain_mri_pretrain run's best.pth); "" = pretrain here
    pretrain_args: str = ""  # extra arguments for the pretraining only, e.g. "--epochs 200 --inpaint-p 0.3"

    def __post_init__(self) -> None:
        try:
            self.fraction_list, self.seed_list = self.parse_lists()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not all(0 < m < math.inf for m in (self.pretrain_minutes, self.finetune_minutes)):  # NaN fails too
            raise ConfigError(f"pretrain_minutes and finetune_minutes must be finite numbers > 0, got "
                              f"{self.pretrain_minutes} and {self.finetune_minutes}")
        if self.pretrained and not Path(self.pretrained).is_file():
            raise ConfigError(f"pretrained: {self.pretrained!r} is not a file (expected a pretraining run's best.pth)")
        for folder in filter(None, (d.strip() for d in self.test_data_dir.split(","))):
            if not Path(folder).is_dir():
                raise ConfigError(f"test_data_dir {folder!r} is not a folder")
        check_folder_name("name", self.name)  # ".." would put the runs beside output_dir
        try:
            self.pretrain_argv = shlex.split(self.pretrain_args)
        except ValueError as err:  # an unbalanced quote
            raise ConfigError(f"pretrain_args {self.pretrain_args!r} cannot be split into arguments: {err}") from None

    def parse_lists(self) -> tuple[list[float], list[int]]:
        """(fractions, seeds) from their comma-separated text; ValueError naming the field and value."""
        try:
            fractions = [float(f) for f in self.fractions.split(",")]
            seeds = [int(s) for s in self.seeds.split(",")]
        except ValueError:
            raise ValueError(f"fractions must be comma-separated numbers and seeds comma-separated ints, got "
                             f"{self.fractions!r} and {self.seeds!r}") from None
        if not all(0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
            raise ValueError(f"fractions must be distinct and in (0, 1], got {self.fractions!r}")
        if len(set(seeds)) != len(seeds) or not all(0 <= s < 2**31 for s in seeds):
            raise ValueError(f"seeds must be distinct and in [0, 2**31) (each run's --seed), got {self.seeds!r}")
        return sorted(fractions), seeds


OWN = {f.replace("_", "-") for f in SSLCurveConfig.__dataclass_fields__}  # this script's keys, dashed


Runner = Callable[[Path, list, str, Path], Path]  # (script, argv, run name, output dir) -> run folder


def run_in_process(script: Path, argv: list[str], name: str, root: Path) -> Path:
    """A :data:`Runner` that calls the recipe's ``main`` in this process (tests, debugging); resumes a saved state."""
    import brain_mri
    import brain_mri_pretrain

    recipes = {FINETUNE: brain_mri.main, PRETRAIN: brain_mri_pretrain.main}
    recipes[Path(script).resolve()]([*argv, "--run-name", name, "--resume", "auto"])
    return Path(root) / name


def ensure_run(runner: Runner, script: Path, argv: list[str], name: str, root: Path) -> Path:
    """Run ``script`` into ``root/name`` unless it has summary.json (finished); returns the run folder. A run
    trained with other arguments (its ``launch_args.json``) is neither reused nor resumed: ConfigError."""
    check_run_args(root / name, argv, where="the curve")
    if (root / name / "summary.json").is_file():
        return root / name
    return runner(script, argv, name, root)


def log_to_wandb(cfg: SSLCurveConfig, run_cfg: BrainMRIConfig, root: Path, paths: dict, summary: dict) -> None:
    """One W&B run in group ``cfg.name``: the table and the plot (offline by default; nothing when disabled)."""
    if run_cfg.wandb_mode == "disabled":
        return
    import wandb

    table = curve_table(summary)
    run = wandb.init(project=run_cfg.wandb_project, group=cfg.name, name=f"{cfg.name}-curve", job_type="ssl-curve",
                     dir=str(root), mode=run_cfg.wandb_mode, config={**vars(cfg), "brain_mri": vars(run_cfg)})
    run.log({"ssl_curve/table": wandb.Table(columns=[c.heading for c in table.columns],
                                            data=[[row.get(c.key) for c in table.columns] for row in table.rows]),
             "ssl_curve/plot": wandb.Image(str(paths["png"]))})
    run.finish()


def main(argv: list[str] | None = None, runner: Runner = train_run) -> dict:
    """Train every missing run with ``runner`` (default: a subprocess under $LAUNCH), score, write the curve."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(config_help(SSLCurveConfig, "brain_mri_ssl_curve.py") + "\n\nEvery other --key value goes to each "
              "recipes/brain_mri.py run (python recipes/brain_mri.py --help lists them).")
        raise SystemExit(0)
    ours, rest = split_args(argv, OWN, takes_value=OWN)
    cfg = parse_config(SSLCurveConfig, ours)
    pretrain_args = cfg.pretrain_argv
    for where, args, keys in (("", rest, SET_HERE), (" (in --pretrain-args)", pretrain_args, SET_IN_PRETRAIN)):
        clash = [t.split("=")[0] for t in split_args(args, keys)[0] if t.startswith("--")]  # else overridden
        if clash:
            raise ConfigError(f"{clash}{where} are set by the curve itself; leave them out")
    data = ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    common = [*data, *rest, *([] if split_args(rest, {"postprocess"})[0] else ["--postprocess", "false"])]
    run_cfg = parse_config(BrainMRIConfig, common)  # refuses bad brain_mri.py arguments before any training
    if run_cfg.context_slices or run_cfg.target not in ("", "binary"):  # the pretrained model: 1 slice in, 1 out
        raise ConfigError(f"--context-slices {run_cfg.context_slices} / --target {run_cfg.target or '(data)'}: "
                         "the curve pretrains a binary model on single slices (Dice of binary masks); its weights "
                         "cannot start a 2.5D or multi-class run: leave out --context-slices and --target")
    if cfg.test_data_dir:  # scored after every run: a folder without slices is refused before any training
        try:
            discover_folders(cfg.test_data_dir, channels=run_cfg.channels or run_cfg.in_channels,
                             skip_bad_files=run_cfg.skip_bad_files)
        except (FileNotFoundError, ValueError) as err:  # DataError is a ValueError
            raise ConfigError(f"test_data_dir: {err}") from None
    pre_keys = {t[2:].split("=")[0].replace("_", "-") for t in pretrain_args if t.startswith("--")}
    shared = split_args([*data, *split_args(rest, TO_PRETRAIN)[0]], pre_keys)[1]  # --pretrain-args wins (not twice)
    pre_argv = [*shared, *pretrain_args, "--max-minutes", str(cfg.pretrain_minutes), "--output-dir"]
    root = Path(cfg.output_dir) / cfg.name
    parse_config(BrainMRIPretrainConfig, [*pre_argv, str(root)])
    weights = Path(cfg.pretrained) if cfg.pretrained else \
        ensure_run(runner, PRETRAIN, [*pre_argv, str(root)], "pretrain", root) / "best.pth"
    scores, cache = {}, {}
    for f in cfg.fraction_list:
        for s in cfg.seed_list:
            for arm in SSL_ARMS:
                extra = ["--init-from", str(weights)] if arm == "pretrained" else []
                args = [*(common if arm == "pretrained" else split_args(common, PRETRAINED_ONLY)[1]), *extra,
                        "--label-fraction", str(f), "--seed", str(s), "--max-minutes", str(cfg.finetune_minutes),
                        "--output-dir", str(root)]
                run_dir = ensure_run(runner, FINETUNE, args, run_name(f, s, arm), root)
                scores[(f, s, arm)] = score_run(run_dir, cfg.test_data_dir, cache)
    summary = curve_summary(scores, cfg.fraction_list, cfg.seed_list)
    command = command_line("recipes/brain_mri_ssl_curve.py", argv)
    summary.update(pretrained_weights=str(weights), pretrain_minutes=cfg.pretrain_minutes,
                   finetune_minutes=cfg.finetune_minutes, brain_mri_args=common, command=command,
                   runs={run_name(f, s, a): v for (f, s, a), v in scores.items()})
    paths = write_curve(root, summary, footer=f"`{command}`")
    print(Path(paths["md"]).read_text())
    log_to_wandb(cfg, run_cfg, root, paths, summary)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return summary


if __name__ == "__main__":
    run_recipe(main)
