# make demo | make test | make brain-mri ARGS="--epochs 5" | make install
# Hardware: GPUs found by nvidia-smi → accelerate_config.yaml on all of them (bf16);
# otherwise the CPU, with bf16 autocast where it has bf16 instructions (avx512_bf16 / amx_bf16), else fp32
# (README, Performance). Override: DEVICE=cpu|gpu, PROCS=N, CONFIG=file.yaml, PRECISION=no|bf16 (CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= accelerate_config.yaml
NGPU := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
DEVICE ?= $(if $(filter 0,$(NGPU)),cpu,gpu)
PROCS ?= $(if $(filter gpu,$(DEVICE)),$(NGPU),1)
ARGS ?=
PRECISION ?= $(shell grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bf16 || echo no)

export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

ifeq ($(DEVICE),gpu)
LAUNCH := $(BIN)/accelerate launch --config_file $(CONFIG) --num_processes $(PROCS)
else ifeq ($(PROCS),1)
LAUNCH := $(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision $(PRECISION) --dynamo_backend no
else
LAUNCH := ACCELERATE_USE_CPU=true $(BIN)/accelerate launch --multi_gpu --num_processes $(PROCS) --num_machines 1 --mixed_precision $(PRECISION) --dynamo_backend no
endif

# Demo: built-in synthetic MRI slices on this machine, a few minutes on a CPU. Its settings are in
# examples/configs/demo.yaml; ARGS override them (make demo ARGS="--epochs 5"). The run is demo-<date>-<time>
# unless ARGS name it (--run-name).
RUN_NAME_UNLESS_GIVEN = $(if $(findstring --run-name,$(ARGS))$(findstring --run_name,$(ARGS)),,--run-name $(1)-$(shell date +%Y%m%d-%H%M%S))

.PHONY: install demo demo-brats test brain-mri brain-mri-pretrain brain-mri-cv ssl-curve cifar10 mnist compare-mnist clean stl10-supervised stl10-resnet18 stl10-pretrain stl10-probe ssl-cifar10 stl10 report bench kill-harness slurm-check pretrain-throughput
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(LAUNCH) recipes/brain_mri.py --config examples/configs/demo.yaml $(call RUN_NAME_UNLESS_GIVEN,demo) $(ARGS)

brain-mri: $(STAMP)
	$(LAUNCH) recipes/brain_mri.py $(ARGS)

# Self-supervised pretraining, restoration or --objective lesions (docs/brain-mri.md): ARGS="--data-dir DIR --exclude-split runs/X/split.json"
brain-mri-pretrain: $(STAMP)
	$(LAUNCH) recipes/brain_mri_pretrain.py $(ARGS)

# Multi-class demo (docs/brain-mri.md, Volumes): 8 synthetic 3D cases (FLAIR + T1c, BraTS-style labels) into
# data/synthetic-brats/ (once), then BraTS regions (whole tumour, tumour core, enhancing) on their slices; settings
# in examples/configs/demo_brats.yaml, which ARGS override.
demo-brats: $(STAMP)
	$(BIN)/python -m toolkit.data.mri.synthetic_volumes data/synthetic-brats
	$(LAUNCH) recipes/brain_mri.py --config examples/configs/demo_brats.yaml $(call RUN_NAME_UNLESS_GIVEN,demo-brats) $(ARGS)

# Cross-validation (docs/brain-mri.md): FOLDS folds of recipes/brain_mri.py into runs/$(NAME)/fold<k>/, then
# out-of-fold scores (runs/$(NAME)/cv.json) and post-processing; run it again to continue a killed one.
# FINAL=N: then N models on every patient, runs/$(NAME)/all, all1 ..., with the out-of-fold post-processing.
FOLDS ?= 3
NAME ?= brain-mri-cv
brain-mri-cv: $(STAMP)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/brain_mri_cv.py --folds $(FOLDS) --name $(NAME) $(if $(FINAL),--final $(FINAL)) -- $(ARGS)

# Label-efficiency curve (docs/brain-mri.md): pretrained vs from-scratch runs per label fraction and seed into
# runs/ssl-curve/, then ssl_curve.{json,md,png}; run it again to continue a killed one.
ssl-curve: $(STAMP)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/brain_mri_ssl_curve.py $(ARGS)

cifar10: $(STAMP)
	$(LAUNCH) recipes/cifar10.py $(ARGS)

mnist: $(STAMP)
	$(LAUNCH) recipes/mnist_autoencoder.py $(ARGS)

# Trains (or reuses) the four MNIST runs and prints/saves the comparison table.
compare-mnist: $(STAMP)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/mnist_compare.py $(ARGS)

# STL-10 (data: data/stl10/stl10_binary/, or ARGS="--data-dir DIR", or ARGS="--download true"). ARGS go to
# every STL-10 recipe; SUPERVISED_ARGS, RESNET18_ARGS, PRETRAIN_ARGS, PROBE_ARGS to one each (e.g. under make stl10).
stl10-supervised: $(STAMP)
	$(LAUNCH) recipes/stl10_supervised.py $(ARGS) $(SUPERVISED_ARGS)

stl10-resnet18: $(STAMP)
	$(LAUNCH) recipes/stl10_resnet18.py $(ARGS) $(RESNET18_ARGS)

stl10-pretrain: $(STAMP)
	$(LAUNCH) recipes/stl10_pretrain.py $(ARGS) $(PRETRAIN_ARGS)

# The probe on the newest pretraining run's frozen encoder and on a random one (the control); prints both.
stl10-probe: $(STAMP)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/stl10_probe_compare.py $(ARGS) $(PROBE_ARGS)

# The STL-10 pretraining and probe recipes on real CIFAR-10 images (docs/stl10.md#cifar-10-check): pretrain within
# SSL_CIFAR10_PRETRAIN, then the probe on that encoder and on a random one within SSL_CIFAR10_PROBE each, side by side
# in runs/cifar10_probe_comparison.md. ARGS go to all three runs, PRETRAIN_ARGS / PROBE_ARGS to one recipe.
CIFAR10_DIR ?= ../shared/data/cifar10
SSL_CIFAR10_PRETRAIN ?= --max-minutes 10 --num-workers 0
SSL_CIFAR10_PROBE ?= --max-minutes 5 --num-workers 0
ssl-cifar10: $(STAMP)
	$(LAUNCH) recipes/stl10_pretrain.py --dataset cifar10 --data-dir $(CIFAR10_DIR) $(SSL_CIFAR10_PRETRAIN) $(ARGS) $(PRETRAIN_ARGS)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/stl10_probe_compare.py --dataset cifar10 --data-dir $(CIFAR10_DIR) $(SSL_CIFAR10_PROBE) $(ARGS) $(PROBE_ARGS)

stl10: $(STAMP)
	$(MAKE) stl10-supervised
	$(MAKE) stl10-resnet18
	$(MAKE) stl10-pretrain
	$(MAKE) stl10-probe

# HTML pages of every run under RUNS (default runs/): RUNS/<run>/report.html and RUNS/index.html.
RUNS ?= runs
report: $(STAMP)
	$(BIN)/python -m toolkit.cli report $(RUNS)

# Benchmarks (README, Performance): prints a table, writes runs/bench/bench.json (about 6 to 10 minutes on 2 CPU cores);
# ARGS="--quick" for a smoke run on tiny sizes, ARGS="--only precision,compile" for some sections.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

# Kill harness (README, Reliability): SIGKILL a training run TRIALS times, resume it, compare the weights.
TRIALS ?= 20
kill-harness: $(STAMP)
	$(BIN)/python tools/kill_harness.py --trials $(TRIALS) --seed 0 --workdir /tmp/kill-harness

# STL-10 pretraining images/s in bf16 and fp16 on 1 and all GPUs, and the 100-epoch estimate (docs/stl10.md);
# fake data unless STL10_DIR names a real copy; ARGS="--dry-run" lists the commands. Writes runs/pretrain-throughput/.
pretrain-throughput: $(STAMP)
	PYTHON=$(BIN)/python tools/pretrain_throughput.sh $(ARGS)

# Real SLURM on this machine (examples/slurm/local_check.sh, about 4 to 6 minutes; root, apt-get install slurm-wlm munge):
# one node on localhost, single_node.sbatch on the CPU, USR1, requeue, resume; exit 77 = cannot run here.
slurm-check: $(STAMP)
	examples/slurm/local_check.sh

# Tests in TEST_WORKERS processes (pytest-xdist; 0 = in this process), one torch thread each unless OMP_NUM_THREADS
# says otherwise (measured in docs/testing.md).
TEST_WORKERS ?= 2
test: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-disabled} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q \
		-n $(TEST_WORKERS) $(ARGS)

clean:
	rm -rf runs wandb .pytest_cache
