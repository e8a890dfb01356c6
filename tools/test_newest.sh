#!/usr/bin/env bash
# The newest-JAX leg of `make test`: the course on the newest JAX, Flax and Optax.
#
#   bash tools/test_newest.sh install   # .venv-newest, without constraints
#   bash tools/test_newest.sh run       # every solution, smoke-sized
#   bash tools/test_newest.sh           # both
#
# Creates .venv-newest with Python >= 3.12 (3.12 preferred), installs the course
# there WITHOUT the constraints file (so the newest JAX, Flax and Optax), and runs every
# solutions/ notebook with COURSE_WORK=smoke (utils.sizing: the smallest work). A notebook
# fails on any error, anything written to stderr, a kernel warning, or a verdict other than
# PASSED (tools/run_notebooks.py). Outputs are not compared: strict nbval runs on the pinned
# stack with the real work.
#
# The interpreter: $NEWEST_PYTHON if set, else python3.12 / python3.13 on PATH or under pyenv.
# With none, this leg says so in one line and is skipped (exit 0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${NEWEST_VENV:-.venv-newest}
phase=${1:-all}

source tools/find_python.sh
python=$(find_python "${NEWEST_PYTHON:-}" 3.12 3.13)
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "newest-JAX leg skipped: no Python >= 3.12 here (set NEWEST_PYTHON=/path/to/python3.12)"
  exit 0
fi

start=$SECONDS
if [ "$phase" = install ] || [ "$phase" = all ]; then
echo "newest-JAX leg: $("$python" --version) from $python, venv $VENV"
[ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# No constraints: whatever is newest today, as a new Colab user would get. What a student
# installs (the lab extra: ipywidgets, so tqdm's progress bars are widgets, not a warning)
# plus the notebook runner.
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[lab,grade]"
install_s=$((SECONDS - start))
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
print("newest-JAX leg: " + ", ".join(f"{p} {md.version(p)}"
      for p in ("jax", "jaxlib", "flax", "optax", "numpy")))
EOF
echo "newest-JAX leg: install took ${install_s} s"
fi
[ "$phase" = install ] && exit 0
if [ ! -x "$VENV/bin/python" ]; then
  echo "newest-JAX leg skipped: no $VENV; run: bash tools/test_newest.sh install"
  exit 0
fi

run_start=$SECONDS
status=0
COURSE_WORK=smoke PYDEVD_DISABLE_FILE_VALIDATION=1 \
  "$VENV/bin/python" tools/run_notebooks.py solutions/[0-9][0-9]_*.ipynb || status=$?
echo "newest-JAX leg: notebooks took $((SECONDS - run_start)) s, whole leg $((SECONDS - start)) s"
exit $status
