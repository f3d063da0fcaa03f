# hybrid — ultra-low-dose CT enhancement.  `make demo` and `make test` do all set-up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test lint demo data bench clean

setup: $(STAMP)

# Re-install only when the dependency list changes: fast when already done.
SETUP_NOTICE := make setup: installing hybrid and its pinned dependencies into $(VENV)/ (once; a few minutes)
$(STAMP): pyproject.toml
	@echo "$(SETUP_NOTICE)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
	@echo "$(SETUP_NOTICE): done"

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check hybrid tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# ---------------------------------------------------------------- data and demo
DATA    ?= data
FAST    ?= 0
ifeq ($(FAST),1)
DATA_ARGS ?= --patients 4 --slices 4 --size 256 --max-real-slices 4
else
DATA_ARGS ?= --patients 12 --slices 16 --size 512
endif

data: setup
	$(VENV)/bin/hybrid data --out $(DATA) $(DATA_ARGS)

# `make demo` (FAST=1: 2 slices per case): enhance a phantom and a real chest CT with the
# shipped models in hybrid/assets; prints RMSE/SSIM, writes out/demo/demo.png and metrics.json
demo: setup
	$(PY) -m hybrid.demo $(if $(filter 1,$(FAST)),--fast,)

# ---------------------------------------------------------------- the shipped defaults
# Each needs `make data`.  Each is ONE stage of the recipe, hybrid.recipe.train (who sees which
# patient: its docstring); split: experiments/splits.json; settings: experiments/configs/shipped.json.
.PHONY: train dictionary calibrate heldout search
search: setup
	$(PY) experiments/search.py --retime

train: setup
	$(PY) experiments/train_default.py

dictionary: setup
	$(PY) experiments/build_defaults.py dictionary

calibrate: setup
	$(PY) experiments/build_defaults.py calibrate

heldout: setup
	$(PY) experiments/build_defaults.py heldout

# Speed and memory (a benchmark, never a test): writes experiments/results/bench.json.
bench: setup
	$(PY) experiments/bench_physics.py --repeat 1
	$(PY) experiments/bench_dictionary.py --quick
	$(PY) experiments/bench.py

# The benchmark notebook, executed headless (NB_SLICES slices; NB_BM3D=1 adds BM3D).
NB_SLICES ?= 2
.PHONY: notebook
notebook: setup
	$(PY) experiments/run_notebook.py --slices $(NB_SLICES) $(if $(filter 1,$(NB_BM3D)),--bm3d,)

# ---------------------------------------------------------------- cross-validation
# Leave-one-patient-out CV of the hybrid and the tuned baselines (hybrid/evaluate/cv.py), needs
# `make data`.  Results: experiments/results/cv/ (FAST=1: a smoke run, 2 phantom + 1 real fold
# with tiny budgets, into experiments/results/cv/fast/).  Resumes an interrupted run of the same
# settings; FRESH=1 starts afresh (needed after the recipe or the shipped CNN configurations change).
.PHONY: cv
cv: setup
	$(PY) -m hybrid.evaluate cv $(if $(filter 1,$(FAST)),--fast,) $(if $(filter 1,$(FRESH)),--no-resume,)

# ---------------------------------------------------------------- the gate
# `make dose-sweep`: 1–100 % simulated dose on the held-out patients (hybrid/evaluate/dose_sweep.py),
# input, CNN only, hybrid, BM3D and NLM tuned per dose on training patients; needs `make data`.
# Results: experiments/results/dose_sweep.{json,md,png} (FAST=1: a smoke run into out/fast/).
# `make real-pairs`: every method on the real quarter-dose pairs of ../shared/data/real-pairs
# (check only; baselines tuned at 25 % on training patients): experiments/results/real_pairs.*
.PHONY: dose-sweep real-pairs
RESULTS_OUT = $(if $(filter 1,$(FAST)),out/fast,experiments/results)
dose-sweep: setup
	$(PY) -m hybrid.evaluate dose-sweep --data $(DATA) --out $(RESULTS_OUT) $(if $(filter 1,$(FAST)),--fast,)

real-pairs: setup
	$(PY) -m hybrid.evaluate real-pairs --data $(DATA) --out $(RESULTS_OUT) $(if $(filter 1,$(FAST)),--fast,)

# ---------------------------------------------------------------- batch on Dask
# `make enhance-batch IN="series1 series2 folder/" OUT=DIR [WORKERS=N] [SCHEDULER=tcp://host:8786]`:
# one Dask task per series, resumable (DIR/manifest.jsonl); see `hybrid batch --help`.
# `make bench-batch`: throughput with 1 and 2 workers -> experiments/results/bench_batch.json.
.PHONY: enhance-batch bench-batch
enhance-batch: setup
	@test -n "$(IN)" && test -n "$(OUT)" || { echo "usage: make enhance-batch IN='SERIES...' OUT=DIR [WORKERS=N] [SCHEDULER=tcp://host:8786]" >&2; exit 2; }
	$(VENV)/bin/hybrid batch $(IN) --out $(OUT) $(if $(WORKERS),--workers $(WORKERS),) $(if $(SCHEDULER),--scheduler $(SCHEDULER),)

bench-batch: setup
	$(PY) experiments/bench_batch.py

# `make bench-serve`: hybrid serve with four senders at once -> experiments/results/bench_serve.json.
.PHONY: bench-serve
bench-serve: setup
	$(PY) experiments/bench_serve.py
