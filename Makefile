# SepsisAgent compendium. Quick start: `make paper` then `make test` (see README.md).
PROFILE ?= default
# Knob overrides for every notebook of the run, as a JSON object of dotted knob names,
# e.g. OVERRIDES='{"seed": 1, "worldmodel.backbone": "lstm"}' (python -m sepsisagent.core show lists them).
OVERRIDES ?=
SOURCE  ?= synthicu
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
KERNEL  := sepsisagent
# Every numbered notebook, in order (library notebooks 00-8x, benchmarks 9x).
NOTEBOOKS := $(sort $(wildcard nbs/[0-9][0-9]_*.ipynb))
# Notebooks that need what only SynthICU has (a second hospital): skipped when the profile reads MIMIC-IV.
SYNTHICU_ONLY := nbs/12_counterfactual.ipynb nbs/51_ood.ipynb

.PHONY: paper test lib data clean distclean install help
.DEFAULT_GOAL := help

help:
	@echo "make paper [PROFILE=quick|default|paper] [OVERRIDES='{\"seed\": 1}']"
	@echo "                                          run every notebook with papermill into results/<profile>/"
	@echo "make test                                 nbdev_test (quick profile) + pytest tests/"
	@echo "make data [PROFILE=..] [SOURCE=demo]      build the raw MIMIC-IV-format data for a profile"
	@echo "make lib                                  export nbs/ to the sepsisagent package"
	@echo "make clean | distclean                    remove generated data/results | and the venv"

install: $(STAMP)
$(STAMP): settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (sepsisagent)" >/dev/null
	touch $@

lib: $(STAMP)
	$(BIN)/nbdev_export

data: $(STAMP)
	$(BIN)/python -c "from sepsisagent.mimic import build_raw_data; print(build_raw_data('$(PROFILE)', '$(SOURCE)'))"

paper: $(STAMP) lib
	@set -e; export SEPSISAGENT_PROFILE=$(PROFILE) SEPSISAGENT_OVERRIDES='$(OVERRIDES)'; \
	results=$$($(BIN)/python -m sepsisagent.core check $(PROFILE)); \
	mkdir -p $$results/notebooks; \
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(PROFILE))"; \
	  case " $(SYNTHICU_ONLY) " in *" $$nb "*) \
	    if ! $(BIN)/python -c "import sys; from sepsisagent.core import get_profile; sys.exit(get_profile().source != 'synthicu')"; then \
	      echo "   skipped: needs SynthICU's second site; profile $(PROFILE) reads MIMIC-IV"; continue; fi;; esac; \
	  $(BIN)/papermill --no-progress-bar --log-level WARNING -k $(KERNEL) --cwd nbs \
	    -p profile $(PROFILE) $$nb $$results/notebooks/$$(basename $$nb); \
	done; \
	echo "Executed notebooks in $$results/notebooks; tables, figures and benchmarks in $$results/"

test: $(STAMP) lib
	$(BIN)/python -c "from sepsisagent.mimic import build_raw_data; print(build_raw_data('quick'))"
	SEPSISAGENT_PROFILE=quick SEPSISAGENT_QUIET=1 $(BIN)/nbdev_test --path nbs --n_workers 2 --timing
	SEPSISAGENT_PROFILE=quick SEPSISAGENT_QUIET=1 $(BIN)/pytest -q tests

clean:
	rm -rf data/raw/synthicu data/processed results/quick results/*/notebooks results/*/models results/*/rollouts
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
