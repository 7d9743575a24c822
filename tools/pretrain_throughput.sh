#!/bin/bash
# STL-10 pretraining throughput: recipes/stl10_pretrain.py for 2 epochs in bf16 and fp16 on 1 GPU and on all
# GPUs; writes one JSON with the second epoch's images/s (the first pays cuDNN autotuning and worker start-up),
# the scaling efficiency and the estimated hours of 100 epochs over STL-10's 100,000 unlabelled images on 1 and
# on 8 GPUs (docs/stl10.md, "Pretraining throughput and the 100-epoch estimate").
#
#   tools/pretrain_throughput.sh [--dry-run] [--out FILE] [--work DIR] [--gpus N] [--images N] [--batch B]
#
# --dry-run  print every command and write the JSON skeleton (null figures); runs nothing, needs no GPU
#            (without GPUs it assumes --gpus 2 unless given).
# --out      the JSON (default runs/pretrain-throughput/pretrain_throughput.json); --work: run folders and data
#            (default runs/pretrain-throughput); --gpus: GPUs to use (default: all that nvidia-smi lists);
# --images   unlabelled 96x96 images (default 20000, 1000 of them held out for validation); --batch: images per
#            GPU per step (default 256): the same on 1 and N GPUs, so the global batch is N x B on N GPUs.
# Data: random-pixel STL-10 binaries written into WORK/data/stl10 (throughput does not depend on the pixels),
# or the real copy when STL10_DIR names a folder holding stl10_binary/unlabeled_X.bin (its first N images).
# JSON fields: tools/pretrain_throughput_report.py.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=pretrain_throughput.sh
. tools/gpu_common.sh
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
DRY=0; WORK=runs/pretrain-throughput; OUT=""; GPUS=""; IMAGES=20000; BATCH=256; ASSUMED=""; VAL=1000
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --work) WORK=$2; shift ;;
        --gpus) GPUS=$2; shift ;;
        --images) IMAGES=$2; shift ;;
        --batch) BATCH=$2; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "pretrain_throughput.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$WORK/pretrain_throughput.json}
whole --images "$IMAGES" $((VAL + 1))
whole --batch "$BATCH" 1
default_gpus
whole --gpus "$GPUS" 1
if [ -n "${STL10_DIR:-}" ]; then
    [ -f "$STL10_DIR/stl10_binary/unlabeled_X.bin" ] || {
        echo "pretrain_throughput.sh: STL10_DIR=$STL10_DIR: no stl10_binary/unlabeled_X.bin in it" >&2; exit 2; }
    DATA=$STL10_DIR; SOURCE="real STL-10 ($STL10_DIR)"
else
    DATA=$WORK/data/stl10; SOURCE="fake STL-10 (random pixels, tools/pretrain_throughput.sh)"
fi

export WANDB_MODE=disabled HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK"
COMMANDS="$WORK/commands.txt"
: > "$COMMANDS"
FAILED=0

step rm -rf "$WORK/runs"   # fresh runs (same names every time)
if [ -z "${STL10_DIR:-}" ]; then
    step "$PYTHON" -c "import numpy as np; from toolkit.data.stl10 import write_stl10_binary; \
write_stl10_binary('$DATA/stl10_binary/unlabeled_X.bin', np.random.default_rng(0).integers(0, 256, ($IMAGES, 3, 96, 96), dtype=np.uint8))"
fi
COUNTS=(1); [ "$GPUS" -gt 1 ] && COUNTS+=("$GPUS")
for precision in bf16 fp16; do
    for n in "${COUNTS[@]}"; do
        step "$PYTHON" -m accelerate.commands.launch --config_file accelerate_config.yaml --num_processes "$n" \
            --num_machines 1 --mixed_precision "$precision" recipes/stl10_pretrain.py --data-dir "$DATA" \
            --max-images "$IMAGES" --val-images "$VAL" --epochs 2 --batch-size "$BATCH" --num-workers 4 --seed 0 \
            --wandb-mode disabled --output-dir "$WORK/runs" --run-name "pretrain-$precision-${n}gpu"
    done
done
"$PYTHON" tools/pretrain_throughput_report.py --work "$WORK" --out "$OUT" --gpus "$GPUS" $ASSUMED \
    --images "$IMAGES" --batch "$BATCH" --data "$SOURCE" --commands "$COMMANDS" $([ "$DRY" = 1 ] && echo --dry-run)
exit $FAILED
