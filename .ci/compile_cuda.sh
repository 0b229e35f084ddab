#!/usr/bin/env bash
# Compiles every CUDA source of the library and of its tests (the standalone harness's C ABI) to
# object code for sm_75, sm_80 and sm_90, warnings as errors, so that a broken kernel never lands
# even though CI has no GPU. Also compiles the
# host files that include the CUDA code path (DCNV2_MX_WITH_CUDA) when $PYTHON has MXNet.
#
# Environment: PYTHON (default python3) is the interpreter whose environment gets the cuBLAS and
# cuRAND headers if the CUDA toolkit lacks them (PyPI's nvidia-cublas / nvidia-curand for the
# toolkit's CUDA major version; if that environment refuses installs, into build/ci-cuda-headers);
# NVCC (default nvcc); DCNV2_MX_CUDA_ARCHS (default "75 80 90").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
ARCHS=${DCNV2_MX_CUDA_ARCHS:-"75 80 90"}
HEADER_DIR=build/ci-cuda-headers
CONTRIB=src/operator/contrib

cuda_major=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
toolkit_include=$(dirname "$(command -v "$NVCC")")/../include
echo "compile_cuda: $("$NVCC" --version | tail -1), archs: $ARCHS"

# Directories holding each header, from the toolkit or from the nvidia-* wheels.
find_headers() {
  "$PYTHON" - "$HEADER_DIR" "$@" <<'EOF'
import glob, os, site, sys
target, names = sys.argv[1], sys.argv[2:]
roots = site.getsitepackages() + [site.getusersitepackages(), target]
found = []
for name in names:
    hits = [d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "include"))
            if os.path.isfile(os.path.join(d, name))]
    if not hits:
        sys.exit(1)
    found.append(hits[0])
print(" ".join(sorted(set(found))))
EOF
}

include_flags=()  # expanded as ${include_flags[@]+...}: bash < 4.4 calls an empty array unset
if [ -f "$toolkit_include/cublas_v2.h" ] && [ -f "$toolkit_include/curand_kernel.h" ]; then
  echo "compile_cuda: cuBLAS and cuRAND headers from the toolkit"
else
  case "$cuda_major" in
    11|12) packages="nvidia-cublas-cu$cuda_major nvidia-curand-cu$cuda_major" ;;
    *) packages="nvidia-cublas nvidia-curand" ;;
  esac
  if ! dirs=$(find_headers cublas_v2.h curand_kernel.h); then
    echo "compile_cuda: installing $packages for the headers"
    "$PYTHON" -m pip install -q --no-deps $packages ||
      "$PYTHON" -m pip install -q --no-deps --target "$HEADER_DIR" $packages
    dirs=$(find_headers cublas_v2.h curand_kernel.h) || {
      echo "compile_cuda: no cuBLAS/cuRAND headers after installing $packages" >&2
      exit 1
    }
  fi
  echo "compile_cuda: cuBLAS and cuRAND headers from $dirs"
  for d in $dirs; do include_flags+=(-I "$d"); done
fi

mxnet_include=$("$PYTHON" -c "import mxnet, os; print(os.path.dirname(mxnet.__file__))" \
                2>/dev/null || true)
if [ -n "$mxnet_include" ]; then
  mxnet_include=$mxnet_include/include
  include_flags+=(-I "$mxnet_include")
fi

gencode=()
for arch in $ARCHS; do gencode+=(-gencode "arch=compute_$arch,code=sm_$arch"); done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
for source in $(find src tests -name '*.cu' | sort); do
  echo "compile_cuda: $source"
  "$NVCC" -std=c++17 -O3 -c "${gencode[@]}" -Werror all-warnings \
    -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -DDCNV2_MX_WITH_CUDA=1 -I "$CONTRIB" \
    ${include_flags[@]+"${include_flags[@]}"} "$source" -o "$out/$(basename "$source").o" ||
    status=1
done

# Host files with a CUDA code path: the operator registrations (they need MXNet's lib_api.h).
cuda_host_sources=$(grep -l 'DCNV2_MX_WITH_CUDA' $(find src -name '*.cc') | sort || true)
if [ -z "$mxnet_include" ]; then
  echo "compile_cuda: $PYTHON has no mxnet: not checking $(echo $cuda_host_sources)"
else
  for source in $cuda_host_sources; do
    echo "compile_cuda: $source (host, DCNV2_MX_WITH_CUDA=1)"
    "$NVCC" -std=c++17 -O3 -c -x c++ -Werror all-warnings \
      -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -DDCNV2_MX_WITH_CUDA=1 \
      -DDCNV2_MX_MXNET_VERSION='"ci"' -I "$CONTRIB" ${include_flags[@]+"${include_flags[@]}"} \
      "$source" -o "$out/$(basename "$source").o" || status=1
  done
fi

if [ "$status" -ne 0 ]; then
  echo "compile_cuda: FAILED" >&2
  exit 1
fi
echo "compile_cuda: all CUDA sources compiled"
