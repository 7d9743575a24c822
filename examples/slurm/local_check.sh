#!/bin/bash
# Real-SLURM check on this machine (make slurm-check): starts munged, slurmctld and slurmd for one node on
# localhost (own config, ports 16817/16818, all files under WORK), sbatches single_node.sbatch on the CPU with
# a tiny brain-MRI run, sends `scancel --signal=USR1` once a state exists (as --signal=USR1@120 would), and
# checks that the run saved a state, the job requeued itself, resumed and completed with summary.json.
# Needs root and the Debian packages slurm-wlm + munge. Exit 0: passed; 1: failed; 77: cannot run here (why).
set -uo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/toolkit-slurm-check}
skip() { echo "slurm-check skipped: $*" >&2; exit 77; }
fail() { echo "slurm-check FAILED: $*" >&2; tail -n 30 "$WORK"/job-*.out 2>/dev/null >&2; exit 1; }
for tool in munged slurmctld slurmd sbatch scontrol scancel; do command -v "$tool" >/dev/null || skip "no $tool (apt-get install slurm-wlm munge)"; done
[ "$(id -u)" = 0 ] || skip "needs root (slurmd runs jobs as root here)"
[ -r /etc/munge/munge.key ] || skip "no /etc/munge/munge.key"
rm -rf "$WORK"; mkdir -p "$WORK"/{spool,state,log}
HOST=$(hostname -s)
cat > "$WORK/slurm.conf" <<CONF
ClusterName=toolkitcheck
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=socket=$WORK/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
NodeName=$HOST CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=check Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$WORK/slurm.conf
stop() { for pid in slurmd slurmctld munged; do [ -f "$WORK/$pid.pid" ] && kill "$(cat "$WORK/$pid.pid")" 2>/dev/null; done; }
trap stop EXIT
munged --force --socket="$WORK/munge.sock" --pid-file="$WORK/munged.pid" --log-file="$WORK/log/munged.log" \
    --seed-file="$WORK/munge.seed" || skip "munged did not start"
slurmctld -f "$SLURM_CONF" || skip "slurmctld did not start ($WORK/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" || skip "slurmd did not start ($WORK/log/slurmd.log)"
for _ in $(seq 30); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %t | grep -q idle || skip "the node did not come up ($WORK/log/)"

export LAUNCH_EXTRA="--cpu --mixed_precision no --num_cpu_threads_per_process 1" PROCS_PER_NODE=1 RUN_DIR="$WORK/runs" WANDB_MODE=disabled \
    NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHON=${PYTHON:-$PWD/.venv/bin/python}
RUN="$WORK/runs/slurmcheck"
ARGS=(--image-size 32 --widths 8,16,32 --num-workers 0 --synthetic-images 64 --synthetic-dir "$WORK/synthetic"
      --epochs "${EPOCHS:-10}" --batch-size 4 --checkpoint-every 2 --wandb-mode disabled)
JOB=$(sbatch --parsable --gpus-per-node=0 --cpus-per-task="$(nproc)" --job-name=slurmcheck \
    --output="$WORK/job-%j.out" examples/slurm/single_node.sbatch "${ARGS[@]}") || fail "sbatch refused the script"
echo "job $JOB submitted"
for _ in $(seq 300); do [ -e "$RUN/state/latest" ] && break; sleep 1; done
[ -e "$RUN/state/latest" ] || fail "no state after 300 s"
[ -f "$RUN/summary.json" ] && fail "the run finished before the signal (raise EPOCHS)"
scancel --signal=USR1 "$JOB" && echo "sent USR1 to the job steps of $JOB"
for _ in $(seq 600); do
    state=$(scontrol show job "$JOB" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 1
done
restarts=$(scontrol show job "$JOB" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
echo "job $JOB: $state after $restarts requeue(s)"
[ "$state" = COMPLETED ] || fail "job ended $state"
[ "${restarts:-0}" -ge 1 ] || fail "the job was not requeued"
grep -q "received signal 10: saved" "$WORK"/job-"$JOB".out || fail "no state saved on USR1 in the job output"
grep -q "^resumed $RUN" "$WORK"/job-"$JOB".out || fail "the requeued job did not resume"
[ -f "$RUN/summary.json" ] || fail "no summary.json"
# the same command without SLURM and without interruption (one thread in both: float sums in another thread count
# differ in the last bits) must end bit-identical
"$PYTHON" -m accelerate.commands.launch --cpu --mixed_precision no --num_cpu_threads_per_process 1 --num_processes 1 --num_machines 1 \
    --dynamo_backend no recipes/brain_mri.py --run-name straight --output-dir "$WORK/runs" "${ARGS[@]}" \
    > "$WORK/straight.out" 2>&1 || fail "the uninterrupted run failed ($WORK/straight.out)"
"$PYTHON" - "$RUN" "$WORK/runs/straight" <<'PY' || fail "the requeued run differs from the uninterrupted one"
import json, sys
import torch
a, b = sys.argv[1], sys.argv[2]
wa, wb = (torch.load(f"{r}/best.pth", weights_only=True) for r in (a, b))
bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
ha, hb = (json.load(open(f"{r}/history.json")) for r in (a, b))
keep = lambda h: [{k: v for k, v in e.items() if "time" not in k and "per_s" not in k} for e in h]
if bad or keep(ha) != keep(hb):
    sys.exit(f"best.pth tensors that differ: {bad[:5]}; histories equal: {keep(ha) == keep(hb)}")
print(f"bit-identical: {len(wa)} tensors of best.pth and {len(ha)} epochs of history (losses, metrics, lr)")
PY
echo "slurm-check passed: USR1 saved a state, the job requeued itself, resumed, completed, and ended bit-identical" \
    "to an uninterrupted run"
