# Set-up is two commands: `make install` then `make test`. The main job is `make train`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS ?= $(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p")
UV_FLAGS := --python $(BIN)/python --compile-bytecode $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: install test train lint bench gpu-check reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install $(UV_FLAGS) torch==2.13.0
	$(BIN)/uv pip install $(UV_FLAGS) -e ".[dev]"

test:
	$(BIN)/python -m pytest -q

train:
	$(BIN)/python -m warp_lightning train

lint:
	$(BIN)/ruff check warp_lightning tests benchmarks

# `make bench`: our RL step against TRL's RLOOTrainer, tiny and small GPT-2 (benchmarks/RESULTS.md);
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS=--scaling` for the table of cost against work.
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
# (markdown tables, PNG plots, the paper's claims). At most 90 minutes on 2 cores: the budget is in
# conf/experiment/reproduce.yaml. Run again after an interruption: finished runs are skipped (train resumes).
# `make reproduce REPRO=smoke`: the same chain on the smoke settings, in about 2 minutes (the tests run it).
# REPRO_DIR, REPORTS: where the runs and the reports go; REPRO_ARGS: overrides for every command.
reproduce:
	@set -e; run="$(BIN)/python -m warp_lightning"; dir="$(or $(REPRO_DIR),outputs/reproduce)"; \
	if [ "$(REPRO)" = smoke ]; then \
	  x=smoke; sweep="warp.steps=2,3 warp.seed=0,1"; main="$$dir/sweep/T3_seed0"; \
	  base="warp.steps=12 warp.snapshot_every=4"; ev="eval.subsamples=2 eval.prompts=4 eval.max_new_tokens=8"; \
	  front_ev="$$ev etas=[0,0.5,1]"; \
	else \
	  x=reproduce; sweep=""; main="$$dir/sweep/T100_seed0"; \
	  base=""; ev="eval.subsamples=5 eval.prompts=100"; front_ev="eval.subsamples=5 eval.prompts=50"; \
	fi; \
	echo "== experiment 2: the T sweep (its T=100 seed-0 job is the WARP run of experiments 1 and 3)"; \
	$$run train -m hparams_search=steps +experiment=$$x $$sweep 'warp.snapshot_every=$${warp.steps}' \
	  hydra.sweep.dir=$$dir/sweep 'hydra.sweep.subdir=T$${warp.steps}_seed$${warp.seed}' $(REPRO_ARGS); \
	echo "== baselines at equal compute (I*M*T RL steps, snapshots along training)"; \
	$$run train "+experiment=[$$x,baseline_sft_anchor]" warp.kl_coef=0.01 $$base \
	  hydra.run.dir=$$dir/sft_anchor_0.01 $(REPRO_ARGS); \
	$$run train "+experiment=[$$x,baseline_sft_anchor]" warp.kl_coef=0.1 $$base \
	  hydra.run.dir=$$dir/sft_anchor_0.1 $(REPRO_ARGS); \
	$$run train "+experiment=[$$x,baseline_ema_nomerge]" $$base hydra.run.dir=$$dir/ema_nomerge $(REPRO_ARGS); \
	echo "== experiment 1: SFT vs WARP"; \
	$$run evaluate "model={WARP: $$main/final}" $$ev hydra.run.dir=$$dir/evaluate $(REPRO_ARGS); \
	echo "== experiment 3: fronts"; \
	$$run front run=$$main $$front_ev hydra.run.dir=$$dir/front $(REPRO_ARGS) \
	  "baselines={SFT_anchor_beta_0.01: $$dir/sft_anchor_0.01, SFT_anchor_beta_0.1: $$dir/sft_anchor_0.1, \
	  EMA_anchor_no_merge: $$dir/ema_nomerge}"; \
	$$run report evaluation=$$dir/evaluate sweep=$$dir/sweep front=$$dir/front run=$$main \
	  out=$(or $(REPORTS),reports) hydra.run.dir=$$dir/report $(REPRO_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
