#!/usr/bin/env bash
# The newest-JAX leg of `make test` (Colab runs the newest JAX; CI pins an older one).
#
# Creates .venv-newest with Python >= 3.12 (3.12 preferred: Colab's), installs the course
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

runs_312() {  # a Python that runs and is >= 3.12
  [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

python=""
candidates=("${NEWEST_PYTHON:-}")
for version in 3.12 3.13; do
  candidates+=("$(command -v "python$version" 2>/dev/null || true)")
  if command -v pyenv >/dev/null 2>&1; then
    for p in "$(pyenv root)"/versions/"$version"*/bin/python; do candidates+=("$p"); done
  fi
done
for candidate in "${candidates[@]}"; do
  if runs_312 "$candidate"; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
  echo "newest-JAX leg skipped: no Python >= 3.12 here (set NEWEST_PYTHON=/path/to/python3.12)"
  exit 0
fi

start=$SECONDS
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

run_start=$SECONDS
status=0
COURSE_WORK=smoke PYDEVD_DISABLE_FILE_VALIDATION=1 \
  "$VENV/bin/python" tools/run_notebooks.py solutions/[0-9][0-9]_*.ipynb || status=$?
echo "newest-JAX leg: notebooks took $((SECONDS - run_start)) s, whole leg $((SECONDS - start)) s"
exit $status
