#!/usr/bin/env bash
# The Colab leg of `make test`: every lesson from its real first cell on a replica of Colab.
#
#   bash tools/test_colab.sh install   # the replica venv (.venv-colab): Colab's versions
#   bash tools/test_colab.sh run       # the GPU install resolved (dry run), then every
#                                      # solutions/ notebook, smoke-sized (tools/colab_leg.py)
#   bash tools/test_colab.sh           # both
#
# The venv takes Python 3.13, as Colab's GPU runtime has (2026-08-19), else 3.12 (said in one
# line): $COLAB_PYTHON if set, else python3.13/3.12 on PATH or under pyenv. With neither, the
# leg says so in one line and is skipped (exit 0). pip is Colab's version (24.1.2), and the
# packages come from requirements/colab-gpu.txt (Google's published list): see
# tools/colab_leg.py for what is checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/find_python.sh
VENV=${COLAB_VENV:-.venv-colab}
phase=${1:-all}
start=$SECONDS

if [ "$phase" = install ] || [ "$phase" = all ]; then
  python=$(find_python "${COLAB_PYTHON:-}" 3.13 3.12)
  if [ -z "$python" ]; then
    echo "colab leg skipped: no Python 3.13 or 3.12 here (set COLAB_PYTHON=/path/to/python3.13)"
    exit 0
  fi
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$version" = 3.13 ] || echo "colab leg: Colab runs Python 3.13; using $version (no 3.13 here)"
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --root-user-action=ignore pip==24.1.2
  "$VENV/bin/python" tools/colab_leg.py replica
fi

if [ "$phase" = run ] || [ "$phase" = all ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "colab leg skipped: no replica venv ($VENV); run: bash tools/test_colab.sh install"
    exit 0
  fi
  run_start=$SECONDS
  status=0
  "$VENV/bin/python" tools/colab_leg.py run || status=$?
  echo "colab leg: run took $((SECONDS - run_start)) s, whole leg $((SECONDS - start)) s"
  exit $status
fi
