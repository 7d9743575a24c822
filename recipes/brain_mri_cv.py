"""Cross-validation of the brain-MRI recipe: every fold in turn, then out-of-fold scores and post-processing.

    make brain-mri-cv FOLDS=3 ARGS="--data-dir A,B --max-minutes 15" NAME=figshare-cv
    python recipes/brain_mri_cv.py --folds 3 --name figshare-cv [--output-dir runs] -- --data-dir A,B ...

Arguments after ``--`` go to ``recipes/brain_mri.py`` for every fold (launched with ``$LAUNCH``).
A killed run continues where it stopped when started again with the same command. Leaves
``runs/<name>/fold<k>/`` (one run each), ``postprocess.json`` and ``cv.json``; then
``toolkit evaluate --weights runs/<name> --data-dir DIR --split all`` scores the folds' ensemble. With ``--final``
(``make brain-mri-cv FINAL=1``) one more model trains on every patient in ``runs/<name>/all/`` (``--val-fraction
0``, the last epoch's weights) and takes the out-of-fold post-processing: ``--weights runs/<name>/all`` scores it;
``--final N`` (``FINAL=N``) trains N such models, ``all``, ``all1`` … with seeds one apart: ``--weights
runs/<name>/all runs/<name>/all1 …`` is their ensemble.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from toolkit import ConfigError, check_final, check_folder_name, cv_lines, out_of_fold, train_final, train_folds

RECIPE = Path(__file__).resolve().with_name("brain_mri.py")  # the recipe beside this script, from any folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, recipe_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="%(prog)s [--folds K] --name NAME [--output-dir DIR] [--final [N]] [-- RECIPE ARGS ...]")
    parser.add_argument("--folds", type=int, default=3, help="number of patient-safe folds (>= 2; default 3)")
    parser.add_argument("--name", required=True, help="the CV folder's name under --output-dir")
    parser.add_argument("--output-dir", default="runs", help="where the CV folder goes (default runs)")
    parser.add_argument("--final", nargs="?", type=int, const=1, default=0, metavar="N",
                        help="after the folds, train N (default 1) models on every patient into <name>/all, all1, ... "
                             "(--val-fraction 0, the last epoch's weights, seeds one apart; nnU-Net's 'all' fold) with "
                             "the out-of-fold post-processing")
    args = parser.parse_args(ours)
    try:
        check_folder_name("--name", args.name)  # "", "..", "/x": the folds would land in or beside --output-dir
    except ConfigError as err:
        parser.error(str(err))
    root = Path(args.output_dir) / args.name
    try:
        if args.final:  # before the folds: a refusal after them would cost their hours
            check_final(recipe_args, args.final)
    except ValueError as err:
        parser.error(str(err))
    try:
        folds = train_folds(args.folds, recipe_args, root, recipe=str(RECIPE))
    except ValueError as err:
        parser.error(str(err))
    except subprocess.CalledProcessError as err:  # the fold run said why above
        print(f"error: a fold run stopped (exit status {err.returncode}; its message is above); the folds finished "
              f"under {root} are kept: run the same command again once the cause is fixed", file=sys.stderr)
        return err.returncode or 1
    try:
        result = out_of_fold(root, folds)
    except ValueError as err:  # e.g. a slice the folds trained with is gone from the data: the message names it
        print(f"error: scoring the folds of {root} out of fold: {err}; the trained folds are kept: run the same "
              f"command again once the cause is fixed", file=sys.stderr)
        return 2
    print("\n".join(cv_lines(result, root)))
    if args.final:
        try:
            finals = train_final(recipe_args, root, recipe=str(RECIPE), count=args.final)
        except subprocess.CalledProcessError as err:
            print(f"error: the run on every patient stopped (exit status {err.returncode}; its message is above); "
                  f"the folds and {root / 'cv.json'} are kept: run the same command again to resume it",
                  file=sys.stderr)
            return err.returncode or 1
        print(f"the model(s) of every patient (the last epoch), each with the out-of-fold post-processing: "
              f"toolkit evaluate --weights {' '.join(str(f) for f in finals)} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
