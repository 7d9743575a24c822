# make demo | make test | make brain-mri ARGS="--epochs 5" | make install
# Hardware: GPUs found by nvidia-smi → accelerate_config.yaml on all of them (bf16);
# otherwise the CPU with bf16 autocast. Override: DEVICE=cpu|gpu, PROCS=N, CONFIG=file.yaml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= accelerate_config.yaml
NGPU := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
DEVICE ?= $(if $(filter 0,$(NGPU)),cpu,gpu)
PROCS ?= $(if $(filter gpu,$(DEVICE)),$(NGPU),1)
ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

ifeq ($(DEVICE),gpu)
LAUNCH := $(BIN)/accelerate launch --config_file $(CONFIG) --num_processes $(PROCS)
else ifeq ($(PROCS),1)
LAUNCH := $(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no
else
LAUNCH := ACCELERATE_USE_CPU=true $(BIN)/accelerate launch --multi_gpu --num_processes $(PROCS) --num_machines 1 --mixed_precision bf16 --dynamo_backend no
endif

# Demo: built-in synthetic MRI slices on this machine, a few minutes on a CPU.
DEMO_ARGS ?= --run-name demo-$(shell date +%Y%m%d-%H%M%S) --max-minutes 7 --epochs 40

.PHONY: install demo test brain-mri cifar10 mnist compare-mnist clean
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(LAUNCH) recipes/brain_mri.py $(DEMO_ARGS) $(ARGS)

brain-mri: $(STAMP)
	$(LAUNCH) recipes/brain_mri.py $(ARGS)

cifar10: $(STAMP)
	$(LAUNCH) recipes/cifar10.py $(ARGS)

mnist: $(STAMP)
	$(LAUNCH) recipes/mnist_autoencoder.py $(ARGS)

# Trains (or reuses) the four MNIST runs and prints/saves the comparison table.
compare-mnist: $(STAMP)
	LAUNCH="$(LAUNCH)" $(BIN)/python recipes/mnist_compare.py $(ARGS)

test: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-disabled} $(BIN)/python -m pytest -q $(ARGS)

clean:
	rm -rf runs wandb .pytest_cache
