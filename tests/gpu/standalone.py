"""Standalone check of the CUDA deformable convolution kernels, without MXNet.

The kernels and their C ABI (src/operator/contrib/cuda/standalone_capi.cu) are built into a shared
library with nvcc and cuBLAS, driven through ctypes on PyTorch CUDA tensors, and compared with the
float64 NumPy reference (tests/reference.py) on the same inputs: forward and every gradient, in
float64, float32 and float16, with atomic and deterministic data gradients, under tilings forced
by small scratch budgets. A timing compares them with PyTorch's cuDNN 3x3 convolution.

Needs nvcc, cuBLAS (the toolkit's, or the nvidia-cublas wheel PyTorch depends on), PyTorch with
CUDA and a GPU; it needs neither MXNet nor a CUDA build of it. Used by test_cuda_standalone.py
(pytest) and by run_standalone.sh:

    python tests/gpu/standalone.py build   # compile the harness, print its path
    python tests/gpu/standalone.py check   # all checks, a PASS/FAIL table; exit 1 on failure
    python tests/gpu/standalone.py bench   # timings against cuDNN

DCNV2_STANDALONE_LIB names a prebuilt harness instead (e.g. built on a machine with nvcc).
"""
import collections
import copy
import ctypes
import glob
import hashlib
import os
import shutil
import site
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
CONTRIB = os.path.join(ROOT, "src", "operator", "contrib")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from conv_problem import ConvInputs  # noqa: E402

#: Sources of the harness: the CUDA kernels, their C ABI, tiling and parameter parsing.
SOURCES = ("cuda/deformable_conv_cuda.cu", "cuda/standalone_capi.cu",
           "deformable_conv_tiling.cc", "deformable_conv_param.cc", "common/attrs.cc",
           "common/shapes.cc")

#: Environment variable naming a prebuilt harness library.
ENV_LIBRARY = "DCNV2_STANDALONE_LIB"

#: MXNet's dtype codes, which the harness takes.
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2}

#: (rtol, atol relative to the largest reference value) per dtype. float16 rounds the columns and
#: the column gradient to half precision (relative 2^-11) before sums of C*K products.
TOLERANCES = {"float64": (1e-10, 1e-11), "float32": (1e-4, 2e-5), "float16": (1e-2, 1e-2)}

#: Problems of the checks: every geometry of the CPU tests' grid in spirit, plus channel counts
#: that are not multiples of the kernels' eight-channel chunks, and more filters than channels.
CASES = {
    "b2-k3x3-c12": dict(batch=2, channels=12, height=6, width=7, num_filter=5),
    "b3-k3x2-s21-p10-d21-g2-dg2": dict(
        batch=3, channels=20, height=7, width=6, num_filter=4, kernel=(3, 2), stride=(2, 1),
        pad=(1, 0), dilate=(2, 1), num_group=2, num_deformable_group=2),
    "b1-k1x1-dg3-f2": dict(batch=1, channels=9, height=5, width=5, num_filter=2, kernel=(1, 1),
                           pad=(0, 0), num_deformable_group=3),
    "b2-k5x5-g2-nobias": dict(batch=2, channels=4, height=7, width=7, num_filter=6,
                              kernel=(5, 5), pad=(2, 2), num_group=2, no_bias=True),
    "v1-b2-k3x3-dg2": dict(batch=2, channels=10, height=5, width=6, num_filter=3,
                           num_deformable_group=2, modulated=False),
}

#: The tilings that small scratch budgets force (see budget_for), on TILING_CASE.
TILINGS = ("pixel-tiles", "image-tiles")
TILING_CASE = dict(batch=5, channels=12, height=6, width=6, num_filter=4)


class HarnessUnavailable(RuntimeError):
    """The harness cannot be built or run here; the message says why (tests skip with it)."""


# ------------------------------------------------------------------------------------------
# Building


def find_cublas():
    """(include directory, library file) of a cuBLAS: $CUBLAS_ROOT, the toolkit of nvcc, or an
    nvidia-cublas wheel (PyTorch's dependency). Header and library come from the same root, so
    their versions match. Raises HarnessUnavailable."""
    roots = [os.environ["CUBLAS_ROOT"]] if os.environ.get("CUBLAS_ROOT") else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    packages = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    roots += sorted({d for p in packages for d in glob.glob(os.path.join(p, "nvidia", "*"))})
    for root in roots:
        include = os.path.join(root, "include")
        libraries = sorted(glob.glob(os.path.join(root, "lib*", "libcublas.so*")), key=len)
        if os.path.isfile(os.path.join(include, "cublas_v2.h")) and libraries:
            return include, libraries[0]
    raise HarnessUnavailable("no cuBLAS found (cublas_v2.h and libcublas.so under one root): "
                             "set CUBLAS_ROOT, or pip install nvidia-cublas")


def nvcc_command(output, arch, include, library):
    """The nvcc command line that builds the harness for compute capability `arch` ("90")."""
    sources = [os.path.join(CONTRIB, s) for s in SOURCES]
    return ["nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC",
            f"-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]",
            "-I", CONTRIB, "-I", include, *sources, "-L", os.path.dirname(library),
            f"-l:{os.path.basename(library)}", "-Xlinker", f"-rpath,{os.path.dirname(library)}",
            "-o", output]


def _source_digest():
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(CONTRIB, "**", "*.*"), recursive=True)):
        if path.endswith((".h", ".cc", ".cu")):
            with open(path, "rb") as f:
                digest.update(path.encode() + f.read())
    return digest.hexdigest()[:16]


def device_arch():
    """Compute capability of GPU 0 as "90" (PyTorch), else $DCNV2_STANDALONE_ARCH or "90"."""
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"{major}{minor}"
    except ImportError:
        pass
    return os.environ.get("DCNV2_STANDALONE_ARCH", "90")


def build_harness(arch=None, out_dir=None):
    """Path of the harness library: $DCNV2_STANDALONE_LIB, or built with nvcc into
    build/standalone (reused while the sources are unchanged). Raises HarnessUnavailable."""
    if os.environ.get(ENV_LIBRARY):
        return os.environ[ENV_LIBRARY]
    if shutil.which("nvcc") is None:
        raise HarnessUnavailable(f"nvcc not found (or set {ENV_LIBRARY} to a prebuilt harness)")
    arch = arch or device_arch()
    include, library = find_cublas()
    out_dir = out_dir or os.path.join(ROOT, "build", "standalone")
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, f"libdcnv2_standalone_sm{arch}_{_source_digest()}.so")
    if not os.path.exists(output):
        command = nvcc_command(output + ".tmp", arch, include, library)
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("building the harness failed:\n" + " ".join(command) + "\n"
                               + proc.stdout + proc.stderr)
        os.replace(output + ".tmp", output)
        for stale in glob.glob(os.path.join(out_dir, f"libdcnv2_standalone_sm{arch}_*.so")):
            if stale != output:
                os.remove(stale)
    return output


# ------------------------------------------------------------------------------------------
# Driving the harness


class _Call(ctypes.Structure):
    """Mirror of DcnStandaloneCall in standalone_capi.cu."""
    _fields_ = [("modulated", ctypes.c_int), ("dtype", ctypes.c_int),
                ("num_attrs", ctypes.c_int), ("keys", ctypes.POINTER(ctypes.c_char_p)),
                ("values", ctypes.POINTER(ctypes.c_char_p)),
                ("data_shape", ctypes.c_int64 * 4), ("deterministic", ctypes.c_int),
                ("budget_bytes", ctypes.c_uint64)]


#: What the harness needs to know of a call: the operator (modulated: DCNv2), its keyword
#: parameters, the data and output shapes, and the names of its positional inputs in order.
ConvSpec = collections.namedtuple("ConvSpec", "modulated params shape out_shape inputs")


def spec_of(problem):
    """The ConvSpec of a ConvInputs problem."""
    names = [k for k in ("data", "offset", "mask", "weight", "bias") if k in problem.arrays]
    return ConvSpec(problem.modulated, problem.params, problem.shape, problem.out_shape, names)


class Harness:
    """The harness library, loaded with ctypes. Tensors are PyTorch CUDA tensors."""

    def __init__(self, path):
        self.path = path
        lib = ctypes.CDLL(path)
        call = ctypes.POINTER(_Call)
        pointers = ctypes.POINTER(ctypes.c_void_p)
        lib.dcnv2_standalone_plan.argtypes = [
            call, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
            ctypes.POINTER(ctypes.c_uint64)]
        lib.dcnv2_standalone_forward.argtypes = [
            call, pointers, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p]
        lib.dcnv2_standalone_backward.argtypes = [
            call, ctypes.c_void_p, pointers, pointers, ctypes.c_void_p, ctypes.c_uint64,
            ctypes.c_void_p]
        lib.dcnv2_standalone_last_error.restype = ctypes.c_char_p
        self.lib = lib

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.dcnv2_standalone_last_error().decode())

    @staticmethod
    def _call(spec, dtype, deterministic=False, budget=0):
        attrs = {k: str(v) for k, v in spec.params.items()}
        keys = (ctypes.c_char_p * len(attrs))(*[k.encode() for k in attrs])
        values = (ctypes.c_char_p * len(attrs))(*[v.encode() for v in attrs.values()])
        call = _Call(int(spec.modulated), DTYPE_CODES[dtype], len(attrs), keys, values,
                     (ctypes.c_int64 * 4)(*spec.shape), int(deterministic), budget)
        call._keep = (keys, values)  # the strings must outlive the call
        return call

    def plan(self, spec, dtype, backward=False, deterministic=False, budget=0):
        """(pixels per tile, images per tile, scratch bytes) of a call described by a ConvSpec
        (no GPU needed, except for a deterministic backward)."""
        tile, images, scratch = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_uint64()
        self._check(self.lib.dcnv2_standalone_plan(
            ctypes.byref(self._call(spec, dtype, deterministic, budget)), int(backward),
            ctypes.byref(tile), ctypes.byref(images), ctypes.byref(scratch)))
        return tile.value, images.value, scratch.value

    @staticmethod
    def _pointers(tensors):
        return (ctypes.c_void_p * len(tensors))(
            *[None if t is None else t.data_ptr() for t in tensors])

    def forward(self, spec, inputs, dtype, budget=0):
        """The output (N, F, Ho, Wo) for `inputs` (CUDA tensors keyed by spec.inputs), computed
        on the current stream."""
        import torch
        device = inputs["data"].device
        call = self._call(spec, dtype, budget=budget)
        _, _, scratch_bytes = self.plan(spec, dtype, budget=budget)
        scratch = torch.empty(scratch_bytes, dtype=torch.uint8, device=device)
        out = torch.empty(spec.out_shape, dtype=inputs["data"].dtype, device=device)
        self._check(self.lib.dcnv2_standalone_forward(
            ctypes.byref(call), self._pointers([inputs[k] for k in spec.inputs]),
            out.data_ptr(), scratch.data_ptr(), scratch_bytes,
            torch.cuda.current_stream().cuda_stream))
        return out

    def backward(self, spec, inputs, out_grad, dtype, deterministic, budget=0, wanted=None,
                 poison=True):
        """Gradients (CUDA tensors keyed like `inputs`; only the `wanted` ones, default all) for
        the output gradient (N, F, Ho, Wo), computed on the current stream. With `poison` they
        start as NaN, so that elements the kernels fail to write show."""
        import torch
        wanted = spec.inputs if wanted is None else wanted
        call = self._call(spec, dtype, deterministic, budget)
        _, _, scratch_bytes = self.plan(spec, dtype, True, deterministic, budget)
        scratch = torch.empty(scratch_bytes, dtype=torch.uint8, device=out_grad.device)
        grads = {k: torch.full_like(inputs[k], float("nan")) if poison
                 else torch.empty_like(inputs[k]) for k in wanted}
        self._check(self.lib.dcnv2_standalone_backward(
            ctypes.byref(call), out_grad.data_ptr(),
            self._pointers([inputs[k] for k in spec.inputs]),
            self._pointers([grads.get(k) for k in spec.inputs]), scratch.data_ptr(),
            scratch_bytes, torch.cuda.current_stream().cuda_stream))
        return grads


# ------------------------------------------------------------------------------------------
# Checks


def assert_close(name, actual, expected, dtype):
    """Raises AssertionError unless |actual - expected| <= rtol*|expected| + atol*max|expected|
    everywhere (TOLERANCES[dtype]); NaN anywhere fails."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    rtol, atol = TOLERANCES[dtype]
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = np.abs(actual - expected)
    allowed = rtol * np.abs(expected) + atol * scale
    bad = ~(error <= allowed)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, error, -1)), error.shape)
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())} of {error.size} elements differ; worst at "
            f"{worst}: {actual[worst]!r} vs {expected[worst]!r} (scale {scale:.3g})")


def as_dtype(problem, dtype):
    """The problem with its inputs rounded to `dtype` (stored as float64), so that the float64
    reference sees exactly the values the kernels get."""
    rounded = {k: v.astype(dtype).astype(np.float64) for k, v in problem.arrays.items()}
    problem.arrays = rounded
    return problem


def make_problem(case, dtype, seed=1234, offsets="jittered"):
    """A ConvInputs of CASES-style keyword arguments, inputs rounded to `dtype`."""
    return as_dtype(ConvInputs(np.random.RandomState(seed), offsets=offsets, **case), dtype)


def _device_inputs(problem, dtype, device):
    import torch
    return {k: torch.from_numpy(v.astype(dtype)).to(device) for k, v in problem.arrays.items()}


def _numpy(tensor):
    return tensor.detach().double().cpu().numpy()


def run_on_side_stream(body, device="cuda:0"):
    """body() on a fresh non-default stream of `device`, then waits for it: the kernels must use
    the stream they are given."""
    import torch
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            result = body()
        stream.synchronize()
    return result


def compare_with_reference(harness, problem, dtype, deterministic, budget=0, device="cuda:0",
                           expected_problem=None):
    """Forward and every gradient of `problem` against the float64 reference of
    `expected_problem` (default: the same problem)."""
    import torch
    expected_problem = expected_problem or problem
    spec = spec_of(problem)
    out_grad = np.random.RandomState(99).uniform(-1, 1, problem.out_shape).astype(dtype)

    def body():
        inputs = _device_inputs(problem, dtype, device)
        out = harness.forward(spec, inputs, dtype, budget)
        grads = harness.backward(spec, inputs, torch.from_numpy(out_grad).to(device), dtype,
                                 deterministic, budget)
        return _numpy(out), {k: _numpy(g) for k, g in grads.items()}

    out, grads = run_on_side_stream(body, device)
    assert_close("out", out, expected_problem.reference(), dtype)
    expected = expected_problem.reference_grads(out_grad.astype(np.float64))
    assert sorted(grads) == sorted(expected)
    for name, grad in grads.items():
        assert np.abs(expected[name]).max() > 0.1, name  # a gradient that can be wrong
        assert_close(name + " grad", grad, expected[name], dtype)


def check_case(harness, case, dtype, deterministic, device="cuda:0"):
    """Forward and every gradient of one CASES problem against the float64 reference."""
    compare_with_reference(harness, make_problem(case, dtype), dtype, deterministic,
                           device=device)


def has_tiling(tiling, plan, pixels, batch):
    """Whether a plan (tile, images, scratch) is `tiling`: "pixel-tiles" (tiles within one image)
    or "image-tiles" (tiles of several whole images, the last one partial)."""
    tile, images, _ = plan
    if tiling == "pixel-tiles":
        return tile < pixels and images == 1
    return tile == pixels and 1 < images < batch and batch % images != 0


def budget_for(harness, spec, tiling, deterministic, dtype="float64"):
    """The smallest scratch budget (trying budgets 25% apart) whose backward plan has
    `tiling`; the plan must also fit it."""
    pixels, batch = spec.out_shape[2] * spec.out_shape[3], spec.shape[0]
    budget = 1 << 10
    while budget < 1 << 28:
        try:
            plan = harness.plan(spec, dtype, True, deterministic, budget)
        except RuntimeError:  # not even one pixel fits
            plan = None
        if plan and has_tiling(tiling, plan, pixels, batch):
            assert plan[2] <= budget, (plan, budget)
            return budget
        budget = budget * 5 // 4
    raise AssertionError(f"no budget gives {tiling} for {spec}")


def check_tiling(harness, tiling, deterministic):
    """Correct float64 results under a budget that forces `tiling` (TILINGS)."""
    problem = make_problem(TILING_CASE, "float64")
    budget = budget_for(harness, spec_of(problem), tiling, deterministic)
    compare_with_reference(harness, problem, "float64", deterministic, budget)


def check_determinism(harness, dtype):
    """The deterministic data gradient is bit-identical across runs when many samples share
    corners; requesting only some gradients gives the same values."""
    import torch
    case = dict(batch=2, channels=16, height=8, width=8, num_filter=8)
    problem = make_problem(case, dtype, offsets="clustered")
    spec = spec_of(problem)
    out_grad = np.random.RandomState(5).uniform(-1, 1, problem.out_shape).astype(dtype)

    def body():
        inputs = _device_inputs(problem, dtype, "cuda:0")
        dout = torch.from_numpy(out_grad).to("cuda:0")
        runs = [harness.backward(spec, inputs, dout, dtype, True) for _ in range(3)]
        only_data = harness.backward(spec, inputs, dout, dtype, True, wanted=["data"])
        only_weight = harness.backward(spec, inputs, dout, dtype, True, wanted=["weight"])
        return runs, only_data, only_weight

    runs, only_data, only_weight = run_on_side_stream(body)
    for name in runs[0]:
        for other in runs[1:]:
            assert torch.equal(runs[0][name], other[name]), f"{name} grad differs between runs"
    assert torch.equal(only_data["data"], runs[0]["data"])
    assert torch.equal(only_weight["weight"], runs[0]["weight"])
    expected = problem.reference_grads(out_grad.astype(np.float64))
    assert_close("data grad", _numpy(runs[0]["data"]), expected["data"], dtype)


def check_non_finite_offsets(harness, dtype):
    """Samples at NaN or infinite positions count as off the map, as on the CPU: the results
    equal those of the same samples moved far off the map."""
    problem = make_problem(CASES["b2-k3x3-c12"], dtype)
    offset = problem.arrays["offset"].copy()
    flat = offset.reshape(-1)
    flat[::7], flat[3::11], flat[5::13] = np.nan, np.inf, -np.inf
    problem.arrays["offset"] = offset
    moved = copy.copy(problem)
    moved.arrays = dict(problem.arrays, offset=np.where(np.isfinite(offset), offset, -1e6))
    compare_with_reference(harness, problem, dtype, False, expected_problem=moved)


def check_second_gpu(harness):
    """The kernels run on cuda:1 (streams, cuBLAS handle and memory of that device)."""
    import torch
    if torch.cuda.device_count() < 2:
        raise HarnessUnavailable("only one GPU")
    check_case(harness, CASES["b3-k3x2-s21-p10-d21-g2-dg2"], "float64", True, device="cuda:1")


def all_checks():
    """(name, function) of every check: the pytest module parametrizes over the same list."""
    checks = []
    for case_name, case in CASES.items():
        for dtype in TOLERANCES:
            for mode in ("atomic", "deterministic"):
                checks.append((f"{case_name}-{dtype}-{mode}",
                               lambda h, c=case, d=dtype, m=mode:
                               check_case(h, c, d, m == "deterministic")))
    for tiling in TILINGS:
        for mode in ("atomic", "deterministic"):
            checks.append((f"tiling-{tiling}-{mode}",
                           lambda h, t=tiling, m=mode: check_tiling(h, t, m == "deterministic")))
    for dtype in TOLERANCES:
        checks.append((f"determinism-{dtype}", lambda h, d=dtype: check_determinism(h, d)))
    checks.append(("non-finite-offsets-float32",
                   lambda h: check_non_finite_offsets(h, "float32")))
    checks.append(("second-gpu-float64", check_second_gpu))
    return checks


def require_gpu():
    """Raises HarnessUnavailable unless PyTorch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        raise HarnessUnavailable("PyTorch is not installed (it provides the device buffers)")
    if not torch.cuda.is_available():
        raise HarnessUnavailable("no CUDA device")


# ------------------------------------------------------------------------------------------
# Timing against cuDNN

#: (N, C, H, W, F) of the timing: ResNet stages conv3-conv5 at a 512x512 input, where DCNv2 goes.
BENCH_SHAPES = [(8, 128, 64, 64, 128), (8, 256, 32, 32, 256), (8, 512, 16, 16, 512)]


def _time_ms(fn, repeat=20, warmup=3):
    import torch
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def bench(harness, shapes=BENCH_SHAPES, dtypes=("float32", "float16")):
    """Rows of timings (ms): DCNv2 3x3 forward and forward+backward (atomic and deterministic
    data gradient) against cuDNN's 3x3 convolution of the same shape (TF32 off), with ratios."""
    import torch
    import torch.nn.functional as F
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda:0"
    rows = []
    for n, c, h, w, f in shapes:
        spec = ConvSpec(True, dict(kernel=(3, 3), pad=(1, 1), num_filter=f), (n, c, h, w),
                        (n, f, h, w), ["data", "offset", "mask", "weight", "bias"])
        for dtype in dtypes:
            tdtype = getattr(torch, dtype)
            inputs = {"data": torch.randn(n, c, h, w, device=dev),
                      "offset": torch.rand(n, 18, h, w, device=dev) * 4 - 2,
                      "mask": torch.sigmoid(torch.randn(n, 9, h, w, device=dev)),
                      "weight": torch.randn(f, c, 3, 3, device=dev) * 0.05,
                      "bias": torch.randn(f, device=dev)}
            inputs = {k: v.to(tdtype) for k, v in inputs.items()}
            dout = torch.randn(n, f, h, w, device=dev, dtype=tdtype)
            leaves = [inputs[k].clone().requires_grad_() for k in ("data", "weight", "bias")]

            def cudnn_fwd():
                with torch.no_grad():
                    F.conv2d(*leaves, padding=1)

            def cudnn_fwd_bwd():
                torch.autograd.grad(F.conv2d(*leaves, padding=1), leaves, dout)

            def dcn_fwd():
                harness.forward(spec, inputs, dtype)

            def dcn_fwd_bwd(deterministic):
                harness.forward(spec, inputs, dtype)
                harness.backward(spec, inputs, dout, dtype, deterministic, poison=False)

            dcn_f, cud_f = _time_ms(dcn_fwd), _time_ms(cudnn_fwd)
            dcn_a, dcn_d = _time_ms(lambda: dcn_fwd_bwd(False)), _time_ms(lambda: dcn_fwd_bwd(True))
            cud_fb = _time_ms(cudnn_fwd_bwd)
            rows.append([f"{n}x{c}x{h}x{w}->{f}", dtype, dcn_f, cud_f, dcn_f / cud_f, dcn_a,
                         dcn_d, cud_fb, dcn_a / cud_fb, dcn_d / cud_fb])
    return rows


BENCH_HEADER = ["shape NxCxHxW->F", "dtype", "dcn fwd", "cudnn fwd", "ratio", "dcn f+b atomic",
                "dcn f+b determ.", "cudnn f+b", "ratio atomic", "ratio determ."]


def format_table(header, rows):
    """Plain-text table; floats with three significant digits."""
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ------------------------------------------------------------------------------------------
# Command line


def main(argv):
    command = argv[1] if len(argv) > 1 else "check"
    try:
        if command == "build":
            print(build_harness())
            return 0
        require_gpu()
        harness = Harness(build_harness())
    except HarnessUnavailable as reason:
        print(f"standalone: cannot run here: {reason}", file=sys.stderr)
        return 2
    print(f"harness: {harness.path}")
    if command == "bench":
        print(format_table(BENCH_HEADER, bench(harness)))
        print("times in ms per call; f+b = forward + backward of every input; the offset/mask "
              "convolution of a DCNv2 layer is not included")
        return 0
    rows, failed = [], 0
    for name, check in all_checks():
        started = time.time()
        try:
            check(harness)
            status = "PASS"
        except HarnessUnavailable as reason:
            status = f"SKIP ({reason})"
        except Exception:  # noqa: BLE001  (report every failing check, then exit 1)
            status = "FAIL"
            failed += 1
            traceback.print_exc()
        rows.append([name, status, time.time() - started])
    print(format_table(["check", "result", "seconds"], rows))
    print(f"{len(rows) - failed} of {len(rows)} checks passed or skipped, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
