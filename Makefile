# Set-up is two commands: `make install` then `make test`. The main job is `make train`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS ?= $(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p")
UV_FLAGS := --python $(BIN)/python --compile-bytecode $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: install test test-slow test-all train lint bench gpu-check reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install $(UV_FLAGS) torch==2.13.0
	$(BIN)/uv pip install $(UV_FLAGS) -e ".[dev]"

# `make test`: the suite's first tier (every test not marked slow); `make test-slow`: the second tier (whole
# commands that train, several processes, kills and resumes); `make test-all`: both, as .ci/run does. One process
# per core (at most 8; whole files per process: tests/conftest.py).
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 8 --dist loadfile --no-loadscope-reorder --durations 15
test:
	$(PYTEST) -m "not slow"

test-slow:
	$(PYTEST) -m slow

test-all: test test-slow

train:
	$(BIN)/python -m warp_lightning train

lint:
	$(BIN)/ruff check warp_lightning tests benchmarks

# `make bench`: our RL step against TRL's RLOOTrainer, tiny and small GPT-2 (benchmarks/RESULTS.md);
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS=--scaling` for the table of cost against work.
# `make bench BENCH_ARGS="--shape chat --ks 4,8"`: the chat experiment (SmolLM2-135M-Instruct, film prompts), prompt
# computed once per k samples against once per sample, and against TRL, on 1 thread (about 25 minutes).
bench:
	$(BIN)/uv pip install $(UV_FLAGS) -e ".[dev,bench]"
	$(BIN)/python benchmarks/rl_step.py $(BENCH_ARGS)

# `make gpu-check`: everything that needs a GPU in one script, about 8 minutes on one GPU (benchmarks/gpu_check.py):
# the tests marked gpu, the CLI on the GPU (smoke, then the offline default with I=1 M=2 T=20), the benchmark
# against TRL; summary in benchmarks/gpu_check/GPU_CHECK.md. GPU_PY: another Python (one with CUDA torch);
# GPU_CHECK_ARGS: options, e.g. --wheels DIR to install missing packages offline.
gpu-check:
	$(or $(GPU_PY),$(BIN)/python) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# `make reproduce`: experiments 1-3 of WARP.md on the offline default into outputs/reproduce/, then reports/
# (markdown tables, PNG plots, the paper's claims). At most 100 minutes on 2 cores: the budget is in
# conf/experiment/reproduce.yaml. Run again after an interruption: finished runs are skipped (train resumes).
# The claims compare arms of 3 seeds each: WARP (the sweep's T=100 jobs), RL with the fixed SFT anchor
# (beta 0.1) and RL with the EMA anchor without merging, at equal compute.
# `make reproduce REPRO=smoke`: the same chain on the smoke settings (2 WARP seeds, 1 per baseline; the tests).
# REPRO_DIR, REPORTS: where the runs and the reports go; REPRO_ARGS: overrides for every command.
reproduce:
	@set -e; run="$(BIN)/python -m warp_lightning"; dir="$(or $(REPRO_DIR),outputs/reproduce)"; \
	if [ "$(REPRO)" = smoke ]; then \
	  x=smoke; sweep_other="warp.steps=2 warp.seed=0"; T=3; seeds="0 1"; base_seeds="0"; \
	  base="warp.steps=12 warp.snapshot_every=4"; ev="eval.subsamples=2 eval.prompts=4 eval.max_new_tokens=8"; \
	  front_ev="$$ev etas=[0,0.5,1]"; \
	else \
	  x=reproduce; sweep_other="warp.steps=50,150 warp.seed=0"; T=100; seeds="0 1 2"; base_seeds="0 1 2"; \
	  base="warp.snapshot_every=100"; ev="eval.subsamples=5 eval.prompts=100"; \
	  front_ev="eval.subsamples=5 eval.prompts=40 etas=[0,0.25,0.5,0.75,1]"; \
	fi; \
	main="$$dir/sweep/T$${T}_seed0"; \
	arm() { l=""; for s in $$2; do l="$$l$${l:+, }$$1$$s"; done; echo "[$$l]"; }; \
	echo "== experiment 2: the T sweep (its T=$$T jobs are the WARP arm of experiments 1 and 3)"; \
	for grid in "warp.steps=$$T warp.seed=$$(echo $$seeds | tr ' ' ,)" "$$sweep_other"; do \
	  $$run train -m hparams_search=steps +experiment=$$x $$grid 'warp.snapshot_every=$${warp.steps}' \
	    hydra.sweep.dir=$$dir/sweep 'hydra.sweep.subdir=T$${warp.steps}_seed$${warp.seed}' $(REPRO_ARGS); \
	done; \
	echo "== baselines at equal compute (I*M*T RL steps, snapshots along training)"; \
	b_seeds="warp.seed=$$(echo $$base_seeds | tr ' ' ,)"; \
	$$run train -m "+experiment=[$$x,baseline_sft_anchor]" warp.kl_coef=0.1 $$b_seeds $$base \
	  hydra.sweep.dir=$$dir/sft_anchor_0.1 'hydra.sweep.subdir=seed$${warp.seed}' $(REPRO_ARGS); \
	$$run train -m "+experiment=[$$x,baseline_ema_nomerge]" $$b_seeds $$base \
	  hydra.sweep.dir=$$dir/ema_nomerge 'hydra.sweep.subdir=seed$${warp.seed}' $(REPRO_ARGS); \
	echo "== experiment 1: SFT vs WARP"; \
	$$run evaluate "model={WARP: $$main/final}" $$ev hydra.run.dir=$$dir/evaluate $(REPRO_ARGS); \
	echo "== experiment 3: fronts"; \
	$$run front "run=$$(arm $$dir/sweep/T$${T}_seed "$$seeds")" $$front_ev hydra.run.dir=$$dir/front $(REPRO_ARGS) \
	  "baselines={SFT_anchor_beta_0.1: $$(arm $$dir/sft_anchor_0.1/seed "$$base_seeds"), \
	  EMA_anchor_no_merge: $$(arm $$dir/ema_nomerge/seed "$$base_seeds")}"; \
	$$run report evaluation=$$dir/evaluate sweep=$$dir/sweep front=$$dir/front run=$$main \
	  out=$(or $(REPORTS),reports) hydra.run.dir=$$dir/report $(REPRO_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
