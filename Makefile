# The two commands of the README: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS ?= models
HOST ?= 0.0.0.0
PORT ?= 8000
MOVIELENS_DIR ?=
# Teachers trained by bench-quality, reused by bench-student for the same folds.
TEACHERS ?= $(MODELS)/.teachers
# Extras installed by `make install`: ONNX Runtime for the CPU + training + tests. For a
# GPU, `make install EXTRAS=gpu,train,dev` in a fresh venv: `cpu` and `gpu` never mix.
EXTRAS ?= cpu,train,dev
# `make run` needs no test tools: it installs these alone (`make test` adds `dev` later).
RUN_EXTRAS ?= cpu,train
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install run serve bundle test test-fast lint typecheck bench-quality bench-student bench-serving bench-attack bench-loop-burst bench-scale bench-catalogue clean help

help:
	@echo "make run    - install, build a model bundle on MovieLens-100K if none exists, serve on :$(PORT)"
	@echo "make test   - install and run the whole test suite (needs Redis on 127.0.0.1:6379)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench-quality | bench-student | bench-serving | bench-attack | bench-loop-burst | bench-scale | bench-catalogue - the committed benchmarks behind docs/"

install: $(STAMP)

# --no-compile: pip would byte-compile every module of every wheel (torch alone ships
# thousands) before the first command runs; Python compiles the ones imported, once, on
# first import. With make run's extras that saved 25 s of installing and first importing
# (docs/SCALE.md, item 25).
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile --disable-pip-version-check
# "Once" needs Python to write what it compiled (into the venv and the git-ignored
# __pycache__ of the source tree), also where the environment asks it not to: otherwise
# every process of a command (the pipeline's, each component worker's, the server's)
# compiles torch and the rest of its imports again (docs/SCALE.md, item 26).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[$(EXTRAS)]'
	touch $@

bundle: install
	@if [ -e $(MODELS)/current/manifest.json ]; then \
		echo "model bundle: $$(readlink -f $(MODELS)/current)"; \
	else \
		echo "no bundle in $(MODELS)/current: training one on MovieLens-100K"; \
		$(PY) -m training pipeline $(if $(MOVIELENS_DIR),--data-dir "$(MOVIELENS_DIR)") \
			--dataset ml-100k --split none --out-dir $(MODELS); \
	fi

run:
	$(MAKE) --no-print-directory bundle serve EXTRAS=$(RUN_EXTRAS)

# The image's start script: JSON logs from the first line, one access line per request,
# bounded request heads (deploy/docker/serve.sh).
serve: install
	MODEL_DIR=$(MODELS)/current HOST=$(HOST) PORT=$(PORT) PATH="$(abspath $(VENV))/bin:$$PATH" \
		sh deploy/docker/serve.sh

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app contract training bench

typecheck: install
	$(PY) -m mypy app contract training bench

bench-quality:
	$(MAKE) install EXTRAS=cpu,train,dev,bench
	$(PY) -m bench.quality $(if $(MOVIELENS_DIR),--data-dir "$(MOVIELENS_DIR)") \
		--jobs 2 --save-teachers $(TEACHERS)

bench-student: install
	$(PY) -m bench.student $(if $(MOVIELENS_DIR),--data-dir "$(MOVIELENS_DIR)") \
		--folds u1,u2,u3,u4,u5 --ratios 0.91 --ratio 0.91 --ablations none \
		--teacher-cache $(TEACHERS) --jobs 2

bench-serving: bundle
	$(PY) -m bench.serving --model-dir $(MODELS)/current --repeat 3 \
		--redis-url redis://127.0.0.1:6379/12 --docs docs/BENCHMARKS.md

# One worker's memory under the concurrency-40 teacher flood of issue 14 (docs/deploy.md).
bench-attack: bundle
	$(PY) -m bench.attack --model-dir $(MODELS)/current --docs docs/deploy.md

# Bursts of /recommend then /feedback against one fresh worker with Redis (DB 11, which
# must be empty): whether the closed loop loses impressions or feedback (docs/experiment.md).
bench-loop-burst: bundle
	$(PY) -m bench.loop_burst --model-dir $(MODELS)/current --docs docs/experiment.md

# Synthetic ML-1M-shaped and large-catalogue sets (training.synth); real ML-1M if given.
# The command behind docs/SCALE.md's table (about 80 minutes on 2 cores).
bench-scale: install
	$(PY) -m bench.scale --sets ml1m,ml10m,cat50k,cat1m --pipeline-sets ml1m,real-ml-100k,real-ml-1m \
		--nproc 1,2 --batches 50 $(if $(MOVIELENS_1M_DIR),--movielens-1m "$(MOVIELENS_1M_DIR)") \
		$(if $(MOVIELENS_DIR),--movielens-100k "$(MOVIELENS_DIR)")

# Two-stage /recommend against catalogue size (docs/BENCHMARKS.md, "Catalogue size").
CATALOGUE_SIZES ?= 10000,100000,1000000
bench-catalogue: install
	$(PY) -m bench.catalogue --sizes $(CATALOGUE_SIZES) --work $(MODELS)/.catalogue --requests 200

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
