#!/usr/bin/env bash
# The second install check of the version policy: the newest versions that pyproject.toml's ranges
# allow (no lock), in a fresh virtualenv, then a few tests that touch each library of the JAX stack
# (compilation and determinism: jax; checkpoints: orbax; training: flax, optax; several processes:
# jax.distributed). CI installs the exact versions of requirements-lock.txt instead (.ci/run); run
# this before moving the lock forward, then `python scripts/freeze_lock.py` inside that virtualenv.
#
#   scripts/check_newest.sh                      # the default tests below
#   scripts/check_newest.sh tests/test_train.py  # other tests
#
# Needs PyPI. It does not run in CI: installing the stack takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${NEWEST_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]"

echo "versions that differ from requirements-lock.txt:"
python - <<'PY'
import importlib.metadata as m, pathlib, re
for line in pathlib.Path("requirements-lock.txt").read_text().splitlines():
    if match := re.fullmatch(r"([\w.-]+)==(\S+)", line.strip()):
        name, locked = match.groups()
        try:
            now = m.version(name)
        except m.PackageNotFoundError:
            continue
        if now != locked:
            print(f"  {name}: {locked} -> {now}")
PY

export JAXCNN_DATA_DIR="${JAXCNN_DATA_DIR:-$(cd ../shared/data 2>/dev/null && pwd || echo "$HOME/.jaxcnn/data")}"
if [ "$#" -eq 0 ]; then
    set -- tests/test_architecture.py tests/test_cli_startup.py tests/test_checkpoint.py tests/test_cluster.py \
           tests/test_verify.py
fi
pytest -q -x "$@"
