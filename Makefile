# kubetune: the two commands are `make demo` (the main job) and `make test` (everything CI runs).
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo demo-down dev-up dev-down test lint typecheck crds crds-check unit integration

$(BIN)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

install: $(BIN)/.installed

## The main job: a local cluster whose local node runs the operator's pods; fine-tune SmolLM2, serve it,
## ask it questions. NAME picks the cluster (default demo); `make demo-down` removes it.
NAME ?= demo
demo: install
	$(BIN)/kubetune demo --name $(NAME)

demo-down: install
	$(BIN)/kubetune demo --down --name $(NAME)

dev-up: install
	$(BIN)/kubetune dev up --name $(NAME) --local-node --operator

dev-down: install
	$(BIN)/kubetune dev down --name $(NAME)

## Everything: lint, types, CRD drift, unit, training, serving and integration tests.
test: install lint typecheck crds-check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint: ruff, and the import contracts of .importlinter (the layering of docs/design.md §1).
lint: install
	$(BIN)/ruff check operator trainer tests
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

crds: install
	$(BIN)/kubetune crds
	cp crds/*.yaml charts/kubetune/files/crds/

crds-check: install
	$(BIN)/kubetune crds --check

unit: install
	$(BIN)/python -m pytest -m "not integration and not training and not serving" $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)
