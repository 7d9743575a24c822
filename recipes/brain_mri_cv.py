"""Cross-validation of the brain-MRI recipe: every fold in turn, then out-of-fold scores and post-processing.

    make brain-mri-cv FOLDS=3 ARGS="--data-dir A,B --max-minutes 15" NAME=figshare-cv
    python recipes/brain_mri_cv.py --folds 3 --name figshare-cv [--output-dir runs] -- --data-dir A,B ...

Arguments after ``--`` go to ``recipes/brain_mri.py`` for every fold (launched with ``$LAUNCH``).
A killed run continues where it stopped when started again with the same command. Leaves
``runs/<name>/fold<k>/`` (one run each), ``postprocess.json`` and ``cv.json``; then
``toolkit evaluate --weights runs/<name> --data-dir DIR --split all`` scores the folds' ensemble.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit import out_of_fold, train_folds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, recipe_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3, help="number of patient-safe folds (>= 2)")
    parser.add_argument("--name", required=True, help="the CV folder's name under --output-dir")
    parser.add_argument("--output-dir", default="runs", help="where the CV folder goes")
    args = parser.parse_args(ours)
    root = Path(args.output_dir) / args.name
    try:
        folds = train_folds(args.folds, recipe_args, root)
    except ValueError as err:
        parser.error(str(err))
    result = out_of_fold(root, folds)
    for f in result["per_fold"]:
        print(f"fold {f['fold']}: {f['num_images']} validation slices, per-image Dice {f['dice']:.4f}, "
              f"per patient {f.get('per_patient', {}).get('dice', float('nan')):.4f}")
    plain, post = result["out_of_fold"], result["out_of_fold_postprocessed"]
    print(f"out-of-fold ({result['num_images']} slices): per-image Dice {plain['dice']:.4f}, pooled "
          f"{plain['dice_global']:.4f}; post-processed {post['dice']:.4f} ({result['postprocess']['summary']})")
    for value, s in post.get("per_tumour_type", {}).items():
        print(f"  {value}: Dice {s['dice']:.4f} ({s['num_images']} slices)")
    print(f"wrote {root / 'cv.json'} and {root / 'postprocess.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
