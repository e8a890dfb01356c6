#!/usr/bin/env bash
# `make test` without a selection: every test, scheduled for a machine with few cores.
#
#   bash tools/test_all.sh PYTHON      # PYTHON: the pinned venv's interpreter (.venv/bin/python)
#
# 1. Strict nbval of solutions/ on the pinned stack, alone: its compared outputs include
#    measured comparisons, so nothing else competes with it for the cores.
# 2. Then four parts side by side (most of their time is compiling or Python, one core
#    each), each writing its own log, printed in this order when all are done:
#    - the unit tests, on two pytest-xdist workers (a test file stays on one worker);
#    - the browser tests: every blank course/ notebook in JupyterLab in Chromium (or by
#      nbval where Chromium cannot run), and the rest of the `browser` marker;
#    - the newest-JAX leg (tools/test_newest.sh: install, then every solution, smoke-sized);
#    - the Colab leg (tools/test_colab.sh: a replica of Colab's packages, then every
#      solution from its real first cell, smoke-sized).
# The smoke-sized parts run the same programs as strict nbval wherever a program does not
# depend on the work's size (the checkers' cases, fixed-size demonstrations, often the
# training step itself), and their time is mostly compiling. So strict nbval fills a
# persistent compilation cache (test-output/jax-cache, emptied first), and the unit tests
# (the checkers' tests compile the checkers' own programs), the browser part and the Colab
# leg (which upgrades to the same JAX) only read it: JAX writes no program that compiled in
# under a billion seconds. One writer at a time, so no reader ever sees a half-written
# entry (JAX writes entries in place). Strict nbval's own compared outputs do not depend on
# it: a program is only read back when another notebook compiled the very same one (same
# name, shapes and flags), and no compared line times such a compile. The newest leg
# (another JAX) does not use it, nor do sandboxed kernels (utils.sandbox keeps the cache's
# folder from them).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${1:?usage: tools/test_all.sh PYTHON}
logs=test-output/parts
rm -rf "$logs" && mkdir -p "$logs"
start=$SECONDS
status=0
summary=()

cache=$PWD/test-output/jax-cache
rm -rf "$cache" && mkdir -p "$cache"
# JAX reads these variables at import: strict nbval writes every program, the others none.
writes_cache=(env JAX_COMPILATION_CACHE_DIR="$cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0)
reads_cache=(env JAX_COMPILATION_CACHE_DIR="$cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1000000000)

"${writes_cache[@]}" "$python" -m pytest solutions || status=1
summary+=("strict nbval of solutions/: $((SECONDS - start)) s")

parts=(unit browser newest colab)
declare -A pid began
run_part() {  # run_part NAME COMMAND...: in the background, output to its log
  local name=$1
  shift
  began[$name]=$SECONDS
  ( "$@" >"$logs/$name.log" 2>&1; echo $? >"$logs/$name.rc" ) &
  pid[$name]=$!
}
side_start=$SECONDS
run_part unit "${reads_cache[@]}" "$python" -m pytest tests -m "not browser" -n 2 --dist loadfile
run_part browser "${reads_cache[@]}" "$python" -m pytest tests course -m browser
run_part newest bash tools/test_newest.sh
run_part colab "${reads_cache[@]}" bash tools/test_colab.sh

for name in "${parts[@]}"; do
  wait "${pid[$name]}"
  # A part's own time is when its log was last written (all ran side by side).
  took=$(( $(stat -c %Y "$logs/$name.rc") - $(date +%s) + SECONDS - began[$name] ))
  code=$(cat "$logs/$name.rc")
  echo
  echo "=================== $name (exit $code, ${took} s) ==================="
  cat "$logs/$name.log"
  [ "$code" -eq 0 ] || status=1
  summary+=("$name: ${took} s, exit $code")
done
summary+=("the four side by side: $((SECONDS - side_start)) s")
summary+=("compilation cache from strict nbval: $(find "$cache" -name '*-cache' | wc -l) programs, $(du -sm "$cache" | cut -f1) MB")

echo
echo "make test: $(IFS=';'; echo "${summary[*]}" | sed 's/;/; /g')"
echo "make test: in all $((SECONDS - start)) s (exit $status)"
exit $status
