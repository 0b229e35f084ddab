#!/usr/bin/env bash
# The standalone GPU check in one go, for a machine with a GPU, nvcc, cuBLAS and PyTorch (MXNet
# is not needed): builds the C-ABI harness of the CUDA kernels, runs every check of the
# deformable convolution and the PS-RoI pooling against the float64 NumPy references (a
# PASS/FAIL table) and times forward and forward+backward: the convolution against PyTorch's
# cuDNN 3x3 convolution and torchvision's deform_conv2d (tables of ratios), the PS-RoI pooling
# alone.
#
#   bash tests/gpu/run_standalone.sh [python [out_dir]]   # default: $PYTHON or python3
#
# With out_dir, the checks' and timings' results are also written there as JSON
# (standalone_checks.json, standalone_bench.json, with each kernel's time: bench --profile).
# DCNV2_STANDALONE_LIB=path skips the build (a harness built elsewhere for this GPU). Exits 1 if
# the build or any check fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${1:-${PYTHON:-python3}}
out=()
if [ -n "${2:-}" ]; then out=("--out=$2" --profile); fi

"$PYTHON" - <<'EOF'
import platform, shutil, subprocess
import numpy, torch
print(f"python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}"
      f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}: {torch.cuda.get_device_name(i)}, "
          f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(i)))}")
smi = shutil.which("nvidia-smi")
if smi:
    print("driver", subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True).stdout.strip())
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
"$PYTHON" tests/gpu/standalone.py check "${out[@]:0:1}" || status=1
"$PYTHON" tests/gpu/standalone.py bench "${out[@]}" || status=1
echo "run_standalone: done in $(( $(date +%s) - started )) s, status $status"
exit $status
