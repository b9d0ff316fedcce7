# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both bootstrap what they need (apt packages, .venv) and are safe to re-run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench bench-rtl verify-rtl bench-train bench-ablation bench-deepforest doctor clean

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

bench-rtl: setup  # a CoDeNet config-a frame on the simulated Ultra96-V2 engine (Verilator, minutes)
	$(BIN)/hwconv bench --rtl --model a --board ultra96v2 -o out/bench_rtl

verify-rtl: setup  # 200 random 50-layer programs on the Verilator engine vs golden, coverage report (hours on 2 cores)
	$(BIN)/hwconv verify --board ultra96v2 --programs 200 --layers 50 -o out/verify

bench-train: setup  # tiny detector, 10 min on 2 CPU cores: float vs W4A8 AP50 (docs/results/bench_train.json)
	$(BIN)/python -m benchmarks.train out/bench_train.json --minutes 10

bench-ablation: setup  # AP50 per deformable variant and sampling (docs/results/ablation.*)
	$(BIN)/python -m benchmarks.ablation out/ablation

bench-deepforest: setup  # config a on the deepforest tree crowns, float vs W4A8 (docs/results/deepforest.*)
	$(BIN)/python -m benchmarks.deepforest out/deepforest

doctor: setup
	$(BIN)/hwconv doctor

clean:
	rm -rf out build .pytest_cache .hypothesis
