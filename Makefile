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
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_compare.py
	$(PY) benchmarks/server_load.py

# The shipped default model from scratch (about three hours on one CPU core): stage 1 learns the language,
# stages 2 and 3 fine-tune it on the reasoning data; the result replaces models/nanoprime-pocket.
STAGE3 := --init_from runs/default-reasoning/model --out-dir runs/default-reasoning-3 \
	--train.steps 300 --optim.lr 1e-3 --optim.warmup_steps 10
default-model: setup
	$(PY) -m training train --config training/recipes/default.toml
	$(PY) -m training train --config training/recipes/default_reasoning.toml
	$(PY) -m training train --config training/recipes/default_reasoning.toml $(STAGE3)
	rm -rf models/nanoprime-pocket && cp -r runs/default-reasoning-3/model models/nanoprime-pocket

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
