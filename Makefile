# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both bootstrap what they need (apt packages, .venv) and are safe to re-run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench doctor clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/hwconv demo -o out/demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/hwconv bench --model a

doctor: setup
	$(BIN)/hwconv doctor

clean:
	rm -rf out build .pytest_cache .hypothesis
