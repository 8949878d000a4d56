# NanoPrime: `make run` sets everything up and serves the app on http://localhost:8000;
# `make test` sets everything up and runs every test. Both work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup run test lint bench default-model web-setup web-build web-test web-e2e

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup web-build
	$(VENV)/bin/nanoprime serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
	$(MAKE) web-test web-e2e

bench: setup
	$(PY) benchmarks/cache.py
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/step_breakdown.py
	$(PY) benchmarks/latent_attention.py
	$(PY) benchmarks/ternary_linear.py
	$(PY) benchmarks/lm_head.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_compare.py
	$(PY) benchmarks/server_load.py

# The shipped default model from scratch (about three and a half hours on a 2-core CPU): stage 1 learns the
# language, stages 2 to 5 fine-tune it on the reasoning data (stage 4 on subtraction traces that open with a
# written comparison, stage 5 with more stories in the mix); the result replaces models/nanoprime-pocket, with
# each stage's metrics and loss curve. The model card's hand-written part (models/nanoprime-pocket/README.md
# after its Validation table) is then to be written again from the new figures.
STAGE3 := --init_from runs/default-reasoning/model --out-dir runs/default-reasoning-3 \
	--train.steps 300 --optim.lr 1e-3 --optim.warmup_steps 10
COMPARE_FIRST := --data.sources.arithmetic.options.compare_first true --train.threads 2
STAGE4 := --init_from runs/default-reasoning-3/model --out-dir runs/default-reasoning-4 \
	--train.steps 800 --optim.lr 1e-3 --optim.warmup_steps 10 $(COMPARE_FIRST)
POLISH := [{ name = "polish", fraction = 1.0, mixture = { arithmetic = 4.0, counting = 1.0, \
	story_requests = 3.0, tinystories_v2 = 2.0, manzoni = 0.2 } }]
STAGE5 := --init_from runs/default-reasoning-4/model --out-dir runs/default-reasoning-5 \
	--train.steps 300 --optim.lr 5e-4 --optim.warmup_steps 10 $(COMPARE_FIRST) --phases '$(POLISH)'
STAGE_RUNS := default default-reasoning default-reasoning-3 default-reasoning-4
default-model: setup
	$(PY) -m training train --config training/recipes/default.toml
	$(PY) -m training train --config training/recipes/default_reasoning.toml
	$(PY) -m training train --config training/recipes/default_reasoning.toml $(STAGE3)
	$(PY) -m training train --config training/recipes/default_reasoning.toml $(STAGE4)
	$(PY) -m training train --config training/recipes/default_reasoning.toml $(STAGE5)
	rm -rf models/nanoprime-pocket && cp -r runs/default-reasoning-5/model models/nanoprime-pocket
	cp runs/default-reasoning-5/metrics.jsonl runs/default-reasoning-5/loss.png models/nanoprime-pocket/
	stage=1; for run in $(STAGE_RUNS); do \
		cp runs/$$run/metrics.jsonl models/nanoprime-pocket/stage$$stage-metrics.jsonl; \
		cp runs/$$run/loss.png models/nanoprime-pocket/stage$$stage-loss.png; \
		stage=$$((stage + 1)); \
	done

# The web chat (web_chat/): `npm ci` once per lock file, the static export the backend serves at /,
# vitest unit tests, and browser tests (chromium against the real backend with a tiny model).
WEB := web_chat

$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $@

web-setup: $(WEB)/node_modules/.installed

web-build: web-setup
	cd $(WEB) && npm run build

web-test: web-setup
	cd $(WEB) && npm test

web-e2e: setup web-build
	cd $(WEB) && npm run e2e
