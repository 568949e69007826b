# deepscreen: set-up, demo, tests and tooling. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

# The stamp changes whenever the dependency inputs change, so a second `make install` is a no-op.
INSTALL_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(INSTALL_HASH)
PLACEHOLDER := models/placeholder/model.json

DEMO_IMAGES := .deepscreen/demo-images
DEMO ?= $(DEMO_IMAGES)
DEMO_HOME := .deepscreen/demo

# ruff and mypy only see the folders that exist, so lint works while the tree is being built.
LINT_DIRS := $(wildcard pipeline db workers review cli tests bench devservices)
MYPY_FLAGS := --ignore-missing-imports --follow-imports=silent
PYTEST_FLAGS ?= -q -p no:cacheprovider

.PHONY: help install chromium demo test lint bench chaos load fuzz services-up services-down

help:
	@echo "make demo           screen a demo set on embedded defaults (no services needed); DEMO=<folder> to pick one"
	@echo "make test           lint, start Postgres/Redis if missing, run the full suite"
	@echo "make install        create or update .venv and the placeholder model (no-op when nothing changed)"
	@echo "make lint           ruff on the code, mypy on pipeline/"
	@echo "make bench          the benchmark harness"
	@echo "make chaos          fault tests (marker: chaos)"
	@echo "make load           a burst of 10,000 events through one worker: nothing lost, latency, RSS"
	@echo "make fuzz           fuzz tests with the long hypothesis profile, then the hostile-input benchmark"
	@echo "make services-up    start the local Postgres and Redis if they do not answer"
	@echo "make services-down  stop them"

install: $(STAMP) $(PLACEHOLDER) chromium

# The console's browser test drives Debian's chromium. Installed here when missing and apt-get can (root);
# otherwise that one test is reported as skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make install: no chromium (the browser test will be skipped)"; }

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	@# facenet-pytorch pins torch<2.3; its real runtime needs are in pyproject's dependencies. The resolver
	@# still fails on real conflicts; --no-warn-conflicts only hides the stale pins of this --no-deps package.
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install --quiet --no-warn-conflicts -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Random weights from a fixed seed: NOT A DETECTOR, only there so the pipeline runs before a trained model exists.
$(PLACEHOLDER): | $(STAMP)
	$(BIN)/python -c "from pipeline.model import make_placeholder; make_placeholder('models/placeholder')"

demo: install
	@if [ "$(DEMO)" = "$(DEMO_IMAGES)" ]; then $(BIN)/python scripts/make_demo_images.py $(DEMO_IMAGES); fi
	$(BIN)/deepscreen scan $(DEMO) --home $(DEMO_HOME) --summary

lint: install
	@status=0; \
	if [ -n "$(LINT_DIRS)" ]; then $(BIN)/ruff check $(LINT_DIRS) || status=1; fi; \
	if [ -d pipeline ]; then $(BIN)/mypy $(MYPY_FLAGS) pipeline || status=1; fi; \
	if [ $$status -ne 0 ]; then echo "make lint: FAILED" >&2; fi; \
	exit $$status

test: install lint
	scripts/services.sh up
	@rc=0; $(BIN)/pytest $(PYTEST_FLAGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED (pytest exit $$rc)" >&2; fi; \
	exit $$rc

bench: install
	$(BIN)/python -m bench.run --compare git:4e7aac6:models/deepscreen-irv1
	$(BIN)/python -m bench.distributed
	$(BIN)/python -m bench.rescan

load: install
	scripts/services.sh up
	$(BIN)/python -m bench.load --events 10000 --distinct 1000

chaos: install
	scripts/services.sh up
	DEEPSCREEN_CHAOS_EVENTS=1000 DEEPSCREEN_CHAOS_KILLS=5 $(BIN)/pytest $(PYTEST_FLAGS) -m chaos tests/

fuzz: install
	$(BIN)/pytest $(PYTEST_FLAGS) tests/test_pipeline_decode.py tests/test_pipeline_events.py -k fuzz --hypothesis-profile=long
	$(BIN)/python -m bench.hostile

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down
