#!/bin/bash
# One device call: the four GPU-wait fixes (HEAD) against the code before them (f9b8ec9, in data/old), same machine,
# alternating; then the CIFAR-10 2-minute command on HEAD; then brain_mri at larger batches (HEAD).
# Copied to data/gpu_ab.sh and run as `bash data/gpu_ab.sh` (data/ is ignored) with data/old = the toolkit/, recipes/, tools/ and accelerate_config.yaml of
# f9b8ec9 plus bench/ of b272523, data/cifar10 = ../shared/data/cifar10, .whl = the pinned wheels (4 Dec 2026).
# The first call stopped at its 480 s limit during the 2-minute CIFAR-10 run; a second call on the same warm
# machine ran only the last two stages (the 2-minute run refused its existing run folder, so it has no figure).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
ROOT=$PWD
T0=$(date +%s)
el() { echo "=== $1 at +$(( $(date +%s) - T0 )) s"; }
L="python3 -m accelerate.commands.launch --config_file accelerate_config.yaml --num_processes 1 --num_machines 1 --mixed_precision bf16"
brain() {  # brain ARM NAME BATCH
    local dir=$ROOT; [ "$1" = old ] && dir=$ROOT/data/old
    (cd "$dir" && PYTHONPATH=.:/tmp/site timeout 90 $L recipes/brain_mri.py --synthetic-dir "$ROOT/data/synth" \
        --synthetic-images 2000 --epochs 4 --eval-every 100 --postprocess false --num-workers 4 --batch-size "$3" \
        --seed 0 --wandb-mode disabled --output-dir "$ROOT/runs/ab" --run-name "$2" > "$OUT/$2.log" 2>&1)
    echo "$2 rc=$?"; cp runs/ab/$2/history.json "$OUT/$2.history.json" 2>/dev/null
}
cifar() {  # cifar ARM NAME EPOCHS [MAXMIN]
    local dir=$ROOT; [ "$1" = old ] && dir=$ROOT/data/old
    local extra="--epochs $3 --eval-every 100"; [ -n "${4:-}" ] && extra="--epochs 100 --max-minutes $4 --eval-every 4"
    (cd "$dir" && PYTHONPATH=.:/tmp/site timeout 200 $L recipes/cifar10.py --data-dir "$ROOT/data/cifar10" --download false \
        $extra --model fast --batch-size 128 --lr 0.08 --label-smoothing 0.2 --crop-padding 2 --dropout 0 --whiten true \
        --tta flip-translate --num-workers 0 --wandb-mode disabled --output-dir "$ROOT/runs/ab" --run-name "$2" > "$OUT/$2.log" 2>&1)
    echo "$2 rc=$?"; cp runs/ab/$2/history.json "$OUT/$2.history.json" 2>/dev/null; cp runs/ab/$2/summary.json "$OUT/$2.summary.json" 2>/dev/null
}
{
el start
nvidia-smi -L; python3 -c "import torch, accelerate; print(torch.__version__, accelerate.__version__, torch.cuda.get_device_name(0))"
el brain_ab
brain new bn1 16; brain old bo1 16; brain new bn2 16; brain old bo2 16
el bench
PYTHONPATH=.:/tmp/site timeout 60 python3 -m bench.run --only trainer_overhead --out "$OUT/bench_new.json"; echo "bench new rc=$?"
(cd data/old && PYTHONPATH=.:/tmp/site timeout 60 python3 -m bench.run --only trainer_overhead --out "$OUT/bench_old.json"); echo "bench old rc=$?"
el cifar_ab
cifar new cn1 6; cifar old co1 6
el cifar_2min
cifar new c2 0 2
el brain_batch
brain new bb64 64; brain new bb128 128
el end
} 2>&1 | tee "$OUT/log.txt"
