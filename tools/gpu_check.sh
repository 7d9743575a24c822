#!/bin/bash
# GPU check: each recipe briefly on 1 GPU, then on all GPUs (accelerate_config.yaml, bf16), and the Trainer's
# overhead against a plain loop (bench); writes one JSON (about 10 minutes on a multi-GPU node).
#
#   tools/gpu_check.sh [--dry-run] [--out FILE] [--work DIR] [--gpus N] [--tolerance T]
#
# --dry-run   print every command and write the JSON skeleton (null figures); runs nothing, needs no GPU
#             (without GPUs it assumes --gpus 2 unless given).
# --out       the JSON (default runs/gpu-check/gpu_check.json); --work: run folders and data (default
#             runs/gpu-check); --gpus: GPUs to use (default: all that nvidia-smi lists); --tolerance: the largest
#             relative difference of the last train loss on 1 and N GPUs that counts as the same (default 0.15).
# Recipes: brain_mri (built-in synthetic slices), mnist_autoencoder (generated MNIST-format files), cifar10 when
# CIFAR10_DIR names a folder holding CIFAR-10. Same global batch on 1 and N GPUs (per-GPU batch x N): 16 per GPU
# for brain_mri and mnist_autoencoder, 128 for cifar10 (at 16 its 3,125 steps an epoch ran launch-bound at about
# 1,100 images/s on one H200 and overran a 4-minute slot); PER_GPU_BATCH=B sets B for every recipe.
# JSON fields: tools/gpu_check_report.py. Peak memory: tools/gpu_peak.py (torch.cuda.max_memory_allocated).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=gpu_check.sh
. tools/gpu_common.sh
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
DRY=0; OUT=runs/gpu-check/gpu_check.json; WORK=runs/gpu-check; GPUS=""; TOL=0.15; ASSUMED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        --work) WORK=$2; shift ;;
        --gpus) GPUS=$2; shift ;;
        --tolerance) TOL=$2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
default_gpus
whole --gpus "$GPUS" 1

export WANDB_MODE=disabled HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
RECIPES=(brain_mri mnist_autoencoder)
SKIPPED=""
declare -A RECIPE_ARGS=(
    [brain_mri]="--synthetic-dir $WORK/data/synthetic-mri --epochs 3 --num-workers 4"
    [mnist_autoencoder]="--data-dir $WORK/data/mnist --download false --epochs 3 --val-images 1024 --num-workers 4"
)
if [ -n "${CIFAR10_DIR:-}" ] && [ -d "$CIFAR10_DIR" ]; then
    RECIPES+=(cifar10); RECIPE_ARGS[cifar10]="--data-dir $CIFAR10_DIR --download false --epochs 2 --num-workers 4"
else
    SKIPPED="cifar10 (no data: set CIFAR10_DIR)"
fi
declare -A BATCH=([brain_mri]=16 [mnist_autoencoder]=16 [cifar10]=128)  # images per GPU per step
[ -z "${PER_GPU_BATCH:-}" ] || whole PER_GPU_BATCH "$PER_GPU_BATCH" 1  # when given, it replaces each of these

mkdir -p "$WORK"
COMMANDS="$WORK/commands.txt"
: > "$COMMANDS"
FAILED=0

step rm -rf "$WORK/runs" "$WORK/peak" "$WORK/bench.json"   # fresh runs (same names every time)

step "$PYTHON" -c "import sys; sys.path.insert(0, 'tools'); from pathlib import Path; from kill_harness import fake_mnist; fake_mnist(Path('$WORK/data/mnist'), 16384, 1024)"
COUNTS=(1); [ "$GPUS" -gt 1 ] && COUNTS+=("$GPUS")
for recipe in "${RECIPES[@]}"; do
    for n in "${COUNTS[@]}"; do
        name="$recipe-${n}gpu"
        # shellcheck disable=SC2086  # RECIPE_ARGS entries are split into flags on purpose
        step env GPU_PEAK_DIR="$WORK/peak/$name" "$PYTHON" -m accelerate.commands.launch \
            --config_file accelerate_config.yaml --num_processes "$n" --num_machines 1 --mixed_precision bf16 \
            tools/gpu_peak.py "recipes/$recipe.py" ${RECIPE_ARGS[$recipe]} \
            --batch-size $((${PER_GPU_BATCH:-${BATCH[$recipe]}} * GPUS / n)) --seed 0 --wandb-mode disabled \
            --output-dir "$WORK/runs" --run-name "$name"
    done
done
step "$PYTHON" -m bench.run --only trainer_overhead --out "$WORK/bench.json"
"$PYTHON" tools/gpu_check_report.py --work "$WORK" --out "$OUT" --gpus "$GPUS" $ASSUMED --tolerance "$TOL" \
    --recipes "$(IFS=,; echo "${RECIPES[*]}")" --skipped "$SKIPPED" --commands "$COMMANDS" \
    $([ "$DRY" = 1 ] && echo --dry-run)
exit $FAILED
