# Two commands on a fresh machine: `make demo` (the whole loop, offline) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.simsearch-installed
DATA ?=
export NO_ALBUMENTATIONS_UPDATE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install test test-slow demo lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,offline,lora,app,text,detect,vae,export,vectordb]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/python -m tools.demo $(if $(DATA),--data $(DATA))

lint: $(STAMP)
	$(BIN)/ruff check src tools tests

clean:
	rm -rf runs demo_data .cache
