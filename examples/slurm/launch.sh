#!/bin/bash
# One `accelerate launch` on this node of a SLURM job; srun starts this once per node (docs/clusters.md):
#   srun --ntasks-per-node=1 examples/slurm/launch.sh recipes/brain_mri.py --resume auto ...
# Rank, main address, port and process count come from the SLURM variables (toolkit/slurm.py).
# Settings (environment): PYTHON (default .venv/bin/python), ACCELERATE_CONFIG (default accelerate_config.yaml),
# LAUNCH_EXTRA (more accelerate launch flags, e.g. "--cpu --mixed_precision no"), PROCS_PER_NODE, MAIN_PROCESS_PORT.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-accelerate_config.yaml}
ARGS=$("$PYTHON" -m toolkit.slurm)   # exits 2 with the reason when a variable is missing
# SLURM sends --signal=USR1 to every process of the job step, this launcher included. The launcher
# would die of it (USR1's default action) and take the step down while the training processes save
# their state, so the launcher ignores it; the training processes install their own handler
# (toolkit/interrupts.py), save a state and exit 0, and then the launcher exits 0.
trap '' USR1
# shellcheck disable=SC2086  # ARGS is one flag or value per line, none with spaces; LAUNCH_EXTRA is split on purpose
exec "$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG" $ARGS ${LAUNCH_EXTRA:-} "$@"
