# Sourced by tools/test_newest.sh and tools/test_colab.sh: find a Python interpreter.
#
#   python=$(find_python "$OVERRIDE" 3.12 3.13)
#
# prints the first that runs of: $OVERRIDE (when set), then for each version in order
# `pythonX.Y` on PATH and pyenv's versions/X.Y*/bin/python (pyenv's shims on PATH fail
# unless that version is selected, so its interpreters are called directly). Prints nothing
# when none runs.
find_python() {
  local override=$1 version candidate
  shift
  local candidates=("$override")
  for version in "$@"; do
    candidates+=("$(command -v "python$version" 2>/dev/null || true)")
    if command -v pyenv >/dev/null 2>&1; then
      for candidate in "$(pyenv root)"/versions/"$version"*/bin/python; do
        candidates+=("$candidate")
      done
    fi
  done
  for candidate in "${candidates[@]}"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
}
