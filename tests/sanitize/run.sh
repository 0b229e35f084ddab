#!/usr/bin/env bash
# Runs operator test files against an AddressSanitizer + UndefinedBehaviorSanitizer build of the
# CPU library (CMake option DCNV2_MX_SANITIZE) loaded into the uninstrumented MXNet, and fails on
# any sanitizer report. Usage, from anywhere, with the Python environment of the tests:
#
#   PYTHON=.venv/bin/python tests/sanitize/run.sh [pytest arguments...]
#
# Without arguments it runs SANITIZE_TESTS (below; test files that do not exist yet are skipped).
# The build goes to build-sanitize/ (BUILD_DIR to change), sanitizer reports to
# build-sanitize/reports/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build-sanitize}

# The operator test files; add new ones here.
SANITIZE_TESTS=(
  tests/test_deformable_conv.py
  tests/test_psroi_pooling.py
  tests/test_fuzz.py
)

"$PYTHON" -m cmake -S . -B "$BUILD_DIR" -G Ninja -DPython3_EXECUTABLE="$("$PYTHON" -c 'import sys; print(sys.executable)')" \
  -DCMAKE_MAKE_PROGRAM="$("$PYTHON" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')" \
  -DCMAKE_BUILD_TYPE=Release -DDCNV2_MX_SANITIZE=ON >/dev/null
"$PYTHON" -m cmake --build "$BUILD_DIR" --parallel

if [ $# -eq 0 ]; then
  set --
  for file in "${SANITIZE_TESTS[@]}"; do
    if [ -e "$file" ]; then set -- "$@" "$file"; else echo "sanitize: $file does not exist, skipped"; fi
  done
fi

# MXNet and Python are not instrumented: the ASan runtime has to be loaded before them, and
# libstdc++ with it so that ASan can intercept C++ throws (our error path; without it ASan stops
# at the first exception); their memory at exit is no finding of ours (detect_leaks=0). Every
# report stops the process (UBSan: -fno-sanitize-recover at build time) and is written to a file
# in $BUILD_DIR, because pytest's output capture loses what a dying process wrote, and a test
# that runs a subprocess may not fail with it.
reports="$BUILD_DIR/reports"
rm -rf "$reports" && mkdir -p "$reports"
export LD_PRELOAD
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=1:log_path=$PWD/$reports/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$PWD/$reports/ubsan
export DCNV2_MX_LIBRARY="$PWD/$BUILD_DIR/libdcnv2_mx.so"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"  # this tree's package
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider "$@" || status=$?
unset LD_PRELOAD
if [ -n "$(ls -A "$reports")" ]; then
  head -n 60 "$reports"/*
  echo "sanitize: sanitizer reports in $reports" >&2
  exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize: tests failed (status $status)" >&2; exit "$status"; }
echo "sanitize: no sanitizer reports"
