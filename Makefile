# Each target that runs code depends on `install`, so `make train` and `make test` are all a
# new user needs. ARGS passes Hydra overrides: make train ARGS="model=resnet18 trainer.max_epochs=5"
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iqs-installed
ARGS ?=

.PHONY: install train test lint format sweep bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/iqs-train $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

lint: install
	$(VENV)/bin/ruff check iqs tests experiments benchmarks
	$(VENV)/bin/ruff format --check iqs tests experiments benchmarks

format: install
	$(VENV)/bin/ruff check --fix iqs tests experiments benchmarks
	$(VENV)/bin/ruff format iqs tests experiments benchmarks

# A small real sweep: two backbones x two learning rates, one epoch each, then the local
# comparison report (compare.md, report.html) in the sweep folder, even if a job failed.
ifndef SWEEP_DIR
SWEEP_DIR := outputs/sweeps/$(shell date +%Y-%m-%d_%H-%M-%S)
endif
sweep: install
	$(VENV)/bin/iqs-train -m model=mobilenetv3_small_100,resnet18 optimizer.lr=0.001,0.003 \
		trainer.max_epochs=1 tags='[sweep]' hydra.sweep.dir=$(SWEEP_DIR) $(ARGS); \
	status=$$?; $(VENV)/bin/iqs-compare $(SWEEP_DIR); exit $$status

# Benchmarks: every speed and memory target as a ratio measured side by side in one run;
# prints the table and writes docs/benchmarks.md (ARGS="--quick" for a fast check).
bench: install
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
