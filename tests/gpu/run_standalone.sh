#!/usr/bin/env bash
# The standalone GPU check in one go, for a machine with a GPU, nvcc, cuBLAS and PyTorch (MXNet
# is not needed): builds the C-ABI harness of the CUDA kernels, runs every check of the
# deformable convolution and the PS-RoI pooling against the float64 NumPy references (a
# PASS/FAIL table) and times forward and forward+backward: the convolution against PyTorch's
# cuDNN 3x3 convolution (a table of ratios), the PS-RoI pooling alone.
#
#   bash tests/gpu/run_standalone.sh [python]      # default: $PYTHON or python3
#
# DCNV2_STANDALONE_LIB=path skips the build (a harness built elsewhere for this GPU). Exits 1 if
# the build or any check fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${1:-${PYTHON:-python3}}

"$PYTHON" - <<'EOF'
import platform, shutil, subprocess
import numpy, torch
print(f"python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}"
      f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}: {torch.cuda.get_device_name(i)}, "
          f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(i)))}")
nvcc = shutil.which("nvcc")
print(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()[-1]
      if nvcc else "nvcc: not found")
EOF

started=$(date +%s)
if ! library=$("$PYTHON" tests/gpu/standalone.py build); then
  echo "run_standalone: building the harness failed" >&2
  exit 1
fi
export DCNV2_STANDALONE_LIB=$library
echo "run_standalone: harness $library built in $(( $(date +%s) - started )) s"

status=0
"$PYTHON" tests/gpu/standalone.py check || status=1
"$PYTHON" tests/gpu/standalone.py bench || status=1
echo "run_standalone: done in $(( $(date +%s) - started )) s, status $status"
exit $status
