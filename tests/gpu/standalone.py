"""Standalone check of the CUDA deformable convolution and PS-RoI pooling kernels, without MXNet.

The kernels and their C ABI (standalone_capi.cu, next to this file) are built into a shared
library with nvcc and cuBLAS, driven through ctypes on PyTorch CUDA tensors, and compared with the
float64 NumPy references (python/dcnv2_mx/tools/reference/conv.py, psroi.py) on the same inputs:
forward and every gradient, in float64, float32 and float16, with atomic and deterministic data
gradients; for the convolution also under tilings forced by small scratch budgets. A timing
compares the convolution with PyTorch's cuDNN 3x3 convolution and times the PS-RoI pooling alone.

Needs nvcc, cuBLAS (the toolkit's, or the nvidia-cublas wheel PyTorch depends on), PyTorch with
CUDA and a GPU; it needs neither MXNet nor a CUDA build of it. Used by test_cuda_standalone.py
(pytest) and by run_standalone.sh:

    python tests/gpu/standalone.py build [--emulated]  # compile the harness, print its path
    python tests/gpu/standalone.py check [--emulated | --asan | --tsan]  # PASS/FAIL table
    python tests/gpu/standalone.py bench [--profile]   # timings against cuDNN and torchvision

`--out=DIR` (check, bench) also writes the results as JSON into DIR (standalone_checks.json,
standalone_bench.json); `--profile` adds the time of every CUDA kernel of each timed call.

DCNV2_STANDALONE_LIB names a prebuilt harness instead (e.g. built on a machine with nvcc).

The same checks run without a GPU on an emulated build (`build --emulated`, `check --emulated`;
the "emulated" half of test_cuda_standalone.py, and test_cuda_emulation.py): the CUDA sources
compiled by the host C++ compiler against the host emulation of CUDA, cuBLAS and CUB in
cuda_emulation/, on NumPy buffers. That verifies the kernels' logic (indexing, tiling, the GEMM
calls, the sort-based deterministic gradient, the streams they use), not their execution on a
GPU. `check --asan` runs them on an emulated build instrumented by AddressSanitizer, which stops
at any out-of-bounds access; `check --tsan` on one instrumented by ThreadSanitizer that runs each
launch on several host threads, which stops at any two GPU threads that touch the same element
without atomics.
"""
import collections
import copy
import ctypes
import glob
import hashlib
import importlib.util
import itertools
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


def _provide_references():
    """Makes the NumPy references importable as dcnv2_mx.tools.reference.{conv,psroi} from this
    source tree's files without importing the package dcnv2_mx, which would load the operators
    into MXNet: this harness needs neither. Under pytest the package is already imported."""
    folder = os.path.join(ROOT, "python", "dcnv2_mx", "tools", "reference")
    for name in ("conv", "psroi"):
        module_name = f"dcnv2_mx.tools.reference.{name}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name,
                                                          os.path.join(folder, name + ".py"))
            sys.modules[module_name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[module_name])


_provide_references()

from conv_problem import ConvInputs  # noqa: E402
from dcnv2_mx.tools.reference.psroi import (  # noqa: E402
    bin_sample_positions, part_index, psroi_pooling, size_pair)

#: Sources of the harness: its C ABI, and the CUDA kernels, parameter parsing and shape checks
#: of the library.
SOURCES = (os.path.join(HERE, "standalone_capi.cu"),
           *(os.path.join(CONTRIB, s) for s in (
               "cuda/deformable_conv_cuda.cu", "cuda/psroi_pooling_cuda.cu",
               "deformable_conv_param.cc", "psroi_pooling_param.cc", "common/attrs.cc",
               "common/shapes.cc")))

#: Environment variable naming a prebuilt harness library.
ENV_LIBRARY = "DCNV2_STANDALONE_LIB"

#: The host emulation of CUDA that an emulated build compiles against (cuda_emulation.h).
EMULATION = os.path.join(HERE, "cuda_emulation")

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
    # 20 channels per deformable group: the offset and mask gradients add chunks of 7, 7 and 6.
    "b1-k3x3-c40-dg2": dict(batch=1, channels=40, height=5, width=4, num_filter=3,
                            num_deformable_group=2),
}

#: The determinism checks' problem: clustered offsets put every sample in the same four cells,
#: so that the data gradient's contributions collide.
DETERMINISM_CASE = dict(batch=2, channels=16, height=8, width=8, num_filter=8)

#: The tilings that small scratch budgets force (see budget_for), on TILING_CASE.
TILINGS = ("pixel-tiles", "image-tiles")
TILING_CASE = dict(batch=5, channels=12, height=6, width=6, num_filter=4)

#: Ways of summing the data gradient: with atomics, or in a fixed order (bit-reproducible).
MODES = ("atomic", "deterministic")

#: Problems of the PS-RoI pooling checks (PSROIInputs keyword arguments): with and without
#: mask and offsets, several classes, position-sensitive groups of 1 to 3, part cells coarser
#: than the bins, non-square bins, groups and cells, 1 to 4 samples per bin side, and RoIs of
#: every kind in ROI_KINDS.
PSROI_CASES = {
    "p3-g3-cls2-s2": dict(batch=2, output_dim=4, group_size=3, pooled_size=3, num_classes=2,
                          special=("inverted", "outside")),
    "p7-g1-part4-cls3-s4": dict(batch=3, output_dim=6, group_size=1, pooled_size=7, part_size=4,
                                num_classes=3, sample_per_part=4, height=10, width=12,
                                spatial_scale=0.0625, special=("nan-trans", "large-trans")),
    "p5-g2-part3-s1-nomask": dict(batch=2, output_dim=2, group_size=2, pooled_size=5,
                                  part_size=3, sample_per_part=1, with_mask=False,
                                  special=("inverted", "large-trans")),
    "p3-g3-cls2-notrans": dict(batch=2, output_dim=4, group_size=3, pooled_size=3, num_classes=2,
                               no_trans=True, special=("outside",)),
    "p4-g2-s4-notrans-nomask": dict(batch=3, output_dim=3, group_size=2, pooled_size=4,
                                    sample_per_part=4, no_trans=True, with_mask=False,
                                    special=("inverted",)),
    "p2x4-g2x1-part2x3-cls2-s2": dict(batch=2, output_dim=4, group_size=(2, 1),
                                      pooled_size=(2, 4), part_size=(2, 3), num_classes=2,
                                      special=("outside", "large-trans")),
    # 20 channels per class: the offset and mask gradients sum chunks of 8, 8 and 4 channels.
    "p3-g1-cls2-c20-s2": dict(batch=2, output_dim=40, group_size=1, pooled_size=3,
                              num_classes=2, special=("outside", "nan-trans")),
}

#: The determinism check's problem: many overlapping RoIs on one image, so that the data
#: gradient's contributions collide.
PSROI_DETERMINISM_CASE = dict(batch=2, output_dim=4, group_size=3, pooled_size=3, num_classes=2,
                              num_rois=24, sample_per_part=4, same_image=True)


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
    return ["nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC",
            f"-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]",
            "-DDCNV2_MX_WITH_CUDA=1", "-I", CONTRIB, "-I", include, *SOURCES,
            "-L", os.path.dirname(library),
            f"-l:{os.path.basename(library)}", "-Xlinker", f"-rpath,{os.path.dirname(library)}",
            "-o", output]


#: What each sanitizer of an emulated build adds to the compiler's flags. The thread sanitizer's
#: build runs each launch on four host threads (races show only between threads that overlap).
SANITIZER_FLAGS = {
    "address": ["-fsanitize=address"],
    "thread": ["-fsanitize=thread", "-DDCNV2_MX_CUDA_EMULATION_WORKERS=4"],
}

#: The runtime library of each sanitizer and its options: stop at the first error (exit 1 for
#: ThreadSanitizer, like AddressSanitizer's) and no leak report (Python's own allocations).
SANITIZER_RUNTIMES = {
    "address": ("libasan.so", "ASAN_OPTIONS", "detect_leaks=0"),
    "thread": ("libtsan.so", "TSAN_OPTIONS", "halt_on_error=1 exitcode=1"),
}


def emulated_command(output, compiler, sanitizer=None):
    """The host compiler command line that builds the harness against the CUDA emulation;
    instrumented by `sanitizer` ("address" or "thread"; run it with sanitizer_environment())."""
    cuda = [s for s in SOURCES if s.endswith(".cu")]
    host = [s for s in SOURCES if not s.endswith(".cu")]
    flags = (["-O1", "-g", "-fno-omit-frame-pointer", *SANITIZER_FLAGS[sanitizer]] if sanitizer
             else ["-O2"])
    return [compiler, "-std=c++17", *flags, "-shared", "-fPIC", "-Wall", "-Wextra",
            "-Wno-unused-parameter", "-Werror", "-DDCNV2_MX_CUDA_EMULATION=1",
            "-DDCNV2_MX_WITH_CUDA=1",
            "-I", os.path.join(EMULATION, "include"), "-I", CONTRIB, "-x", "c++", *cuda,
            "-x", "none", *host, os.path.join(EMULATION, "cuda_emulation.cc"), "-o", output]


def require_emulation_compiler():
    """The host C++ compiler ($CXX or c++) if it can build the CUDA emulation, which needs
    _Float16 (GCC 12 or Clang on x86-64, most compilers on AArch64); raises HarnessUnavailable
    if not."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise HarnessUnavailable(f"no C++ compiler ({compiler}) for the CUDA emulation")
    probe = subprocess.run([compiler, "-std=c++17", "-x", "c++", "-fsyntax-only", "-"],
                           input="_Float16 half = 1.0f;\n", capture_output=True, text=True)
    if probe.returncode != 0:
        raise HarnessUnavailable(f"{compiler} has no _Float16, which the CUDA emulation's "
                                 "float16 needs")
    return compiler


def sanitizer_environment(sanitizer, compiler=None):
    """os.environ plus what a Python process needs to load a build instrumented by `sanitizer`:
    its runtime preloaded (with libstdc++, whose exceptions the sanitizers intercept) and its
    SANITIZER_RUNTIMES options. Raises HarnessUnavailable without the compiler's runtime."""
    compiler = compiler or os.environ.get("CXX", "c++")
    runtime, options_variable, options = SANITIZER_RUNTIMES[sanitizer]
    libraries = []
    for name in (runtime, "libstdc++.so"):
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(path):
            raise HarnessUnavailable(f"{compiler} has no {name} ({sanitizer} sanitizer)")
        libraries.append(path)
    return dict(os.environ, LD_PRELOAD=" ".join(libraries), **{options_variable: options})


def _source_digest():
    digest = hashlib.sha256()
    paths = glob.glob(os.path.join(CONTRIB, "**", "*.*"), recursive=True)
    paths += glob.glob(os.path.join(EMULATION, "**", "*.*"), recursive=True)
    paths += [os.path.join(HERE, "standalone_capi.cu")]
    for path in sorted(paths):
        if path.endswith((".h", ".cc", ".cu", ".cuh")):
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


def build_harness(arch=None, out_dir=None, emulated=False, sanitizer=None):
    """Path of the harness library: $DCNV2_STANDALONE_LIB, or built with nvcc (with `emulated`:
    with the host C++ compiler, $CXX or c++, against the CUDA emulation, instrumented by
    `sanitizer` if given) into build/standalone, reused while the sources are unchanged.
    Raises HarnessUnavailable."""
    if os.environ.get(ENV_LIBRARY) and not emulated:
        return os.environ[ENV_LIBRARY]
    if emulated:
        compiler = require_emulation_compiler()
        name = f"emulated-{sanitizer}" if sanitizer else "emulated"
        command = lambda path: emulated_command(path, compiler, sanitizer)  # noqa: E731
    else:
        if shutil.which("nvcc") is None:
            raise HarnessUnavailable(f"nvcc not found (or set {ENV_LIBRARY} to a prebuilt harness)")
        arch = arch or device_arch()
        include, library = find_cublas()
        name = f"sm{arch}"
        command = lambda path: nvcc_command(path, arch, include, library)  # noqa: E731
    out_dir = out_dir or os.path.join(ROOT, "build", "standalone")
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, f"libdcnv2_standalone_{name}_{_source_digest()}.so")
    if not os.path.exists(output):
        temporary = f"{output}.{os.getpid()}.tmp"  # concurrent builds (pytest-xdist) do not mix
        proc = subprocess.run(command(temporary), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("building the harness failed:\n" + " ".join(command(temporary))
                               + "\n" + proc.stdout + proc.stderr)
        os.replace(temporary, output)
        for stale in glob.glob(os.path.join(out_dir, f"libdcnv2_standalone_{name}_*.so")):
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


class _PSROICall(ctypes.Structure):
    """Mirror of DcnPsroiStandaloneCall in standalone_capi.cu."""
    _fields_ = [("dtype", ctypes.c_int), ("num_attrs", ctypes.c_int),
                ("keys", ctypes.POINTER(ctypes.c_char_p)),
                ("values", ctypes.POINTER(ctypes.c_char_p)),
                ("data_shape", ctypes.c_int64 * 4), ("num_rois", ctypes.c_int64),
                ("num_classes", ctypes.c_int64), ("deterministic", ctypes.c_int)]


def _attribute_strings(params):
    """Operator parameters as the C arrays of keys and values (strings) that a call takes."""
    attrs = {k: str(v) for k, v in params.items()}
    keys = (ctypes.c_char_p * len(attrs))(*[k.encode() for k in attrs])
    values = (ctypes.c_char_p * len(attrs))(*[v.encode() for v in attrs.values()])
    return keys, values


#: What the harness needs to know of a call: the operator (modulated: DCNv2), its keyword
#: parameters, the data and output shapes, and the names of its positional inputs in order.
ConvSpec = collections.namedtuple("ConvSpec", "modulated params shape out_shape inputs")


def spec_of(problem):
    """The ConvSpec of a ConvInputs problem."""
    names = [k for k in ("data", "offset", "mask", "weight", "bias") if k in problem.arrays]
    return ConvSpec(problem.modulated, problem.params, problem.shape, problem.out_shape, names)


#: What the harness needs to know of a PS-RoI pooling call: its keyword parameters (no_trans
#: and no_mask included), the data shape (N, output_dim*G^2, H, W), the number of RoIs R and of
#: classes K (1 without trans and mask), the output shape (R, output_dim, P, P) and the names of
#: its positional inputs in order.
PSROISpec = collections.namedtuple("PSROISpec",
                                   "params shape num_rois num_classes out_shape inputs")


def psroi_spec(params, shape, num_rois, num_classes):
    """The PSROISpec of a call with operator parameters `params`, data `shape` (N, C, H, W),
    `num_rois` RoIs and `num_classes` classes."""
    inputs = ["data", "rois"] + ([] if params.get("no_trans") else ["trans"]) + (
        [] if params.get("no_mask") else ["mask"])
    return PSROISpec(params, tuple(shape), num_rois, num_classes,
                     (num_rois, params["output_dim"]) + size_pair(params["pooled_size"]), inputs)


class CudaBuffers:
    """Device memory through PyTorch CUDA tensors: what the harness built with nvcc takes."""

    default_device = "cuda:0"

    @staticmethod
    def put(array, device):
        import torch
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    @staticmethod
    def get(tensor):
        """A copy as a float64 NumPy array."""
        return tensor.detach().double().cpu().numpy()

    @staticmethod
    def empty(shape, like):
        import torch
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def scratch(nbytes, like):
        import torch
        return torch.empty(nbytes, dtype=torch.uint8, device=like.device)

    @staticmethod
    def full_like(tensor, value):
        import torch
        return torch.full_like(tensor, value)

    @staticmethod
    def pointer(tensor):
        return tensor.data_ptr()

    @staticmethod
    def stream():
        """The current stream (a cudaStream_t as an integer)."""
        import torch
        return torch.cuda.current_stream().cuda_stream

    @staticmethod
    def on_side_stream(body, device):
        """body() on a fresh non-default stream of `device`, then waits for it: the kernels
        must use the stream they are given."""
        import torch
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                result = body()
            stream.synchronize()
        return result

    @staticmethod
    def equal(a, b):
        import torch
        return torch.equal(a, b)

    @staticmethod
    def second_device():
        """The name of a second GPU; HarnessUnavailable without one."""
        import torch
        if torch.cuda.device_count() < 2:
            raise HarnessUnavailable("only one GPU")
        return "cuda:1"


class EmulatedBuffers:
    """Host memory (NumPy arrays) for a harness built against the CUDA emulation, whose "device
    pointers" are host pointers. Streams are fake handles that the emulator checks every launch,
    memset, GEMM and sort against; outside on_side_stream the current one is the default stream
    (0), which the emulator refuses, as the kernels must never use it."""

    default_device = "emulated"

    def __init__(self, lib):
        lib.dcnv2_emulation_expect_stream.argtypes = [ctypes.c_void_p]
        lib.dcnv2_emulation_expect_stream.restype = None
        self._lib = lib
        self._stream = 0
        self._streams_made = 0

    @staticmethod
    def put(array, device):
        return np.array(array, order="C")

    @staticmethod
    def get(array):
        return np.array(array, dtype=np.float64)

    @staticmethod
    def empty(shape, like):
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def scratch(nbytes, like):
        return np.empty(nbytes, dtype=np.uint8)

    @staticmethod
    def full_like(array, value):
        return np.full_like(array, value)

    @staticmethod
    def pointer(array):
        return array.ctypes.data

    def stream(self):
        return self._stream

    def on_side_stream(self, body, device):
        previous = self._stream
        self._streams_made += 1
        self._stream = 0x1000 * self._streams_made  # a handle, never dereferenced
        self._lib.dcnv2_emulation_expect_stream(self._stream)
        try:
            return body()
        finally:
            self._stream = previous
            self._lib.dcnv2_emulation_expect_stream(previous)

    @staticmethod
    def equal(a, b):
        return a.shape == b.shape and a.tobytes() == b.tobytes()

    @staticmethod
    def second_device():
        raise HarnessUnavailable("the CUDA emulation has one device")


class Harness:
    """The harness library, loaded with ctypes. Its tensors are those of `buffers`: PyTorch
    CUDA tensors (CudaBuffers), or NumPy arrays for an emulated build (EmulatedBuffers)."""

    def __init__(self, path):
        self.path = path
        lib = ctypes.CDLL(path)
        self.emulated = hasattr(lib, "dcnv2_emulation_active")
        self.buffers = EmulatedBuffers(lib) if self.emulated else CudaBuffers()
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
        psroi_call = ctypes.POINTER(_PSROICall)
        lib.dcnv2_standalone_psroi_scratch_bytes.argtypes = [
            psroi_call, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
        lib.dcnv2_standalone_psroi_forward.argtypes = [
            psroi_call, pointers, ctypes.c_void_p, ctypes.c_void_p]
        lib.dcnv2_standalone_psroi_backward.argtypes = [
            psroi_call, ctypes.c_void_p, pointers, pointers, ctypes.c_void_p, ctypes.c_uint64,
            ctypes.c_void_p]
        lib.dcnv2_standalone_last_error.restype = ctypes.c_char_p
        self.lib = lib

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.dcnv2_standalone_last_error().decode())

    @staticmethod
    def _call(spec, dtype, deterministic=False, budget=0):
        keys, values = _attribute_strings(spec.params)
        call = _Call(int(spec.modulated), DTYPE_CODES[dtype], len(keys), keys, values,
                     (ctypes.c_int64 * 4)(*spec.shape), int(deterministic), budget)
        call._keep = (keys, values)  # the strings must outlive the call
        return call

    @staticmethod
    def _psroi_call(spec, dtype, deterministic=False):
        keys, values = _attribute_strings(spec.params)
        call = _PSROICall(DTYPE_CODES[dtype], len(keys), keys, values,
                          (ctypes.c_int64 * 4)(*spec.shape), spec.num_rois, spec.num_classes,
                          int(deterministic))
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

    def _pointers(self, tensors):
        """A C array of the tensors' device pointers, which keeps the tensors alive."""
        array = (ctypes.c_void_p * len(tensors))(
            *[None if t is None else self.buffers.pointer(t) for t in tensors])
        array._tensors = tensors
        return array

    def _gradient_buffers(self, inputs, wanted, poison):
        """Uninitialised gradients like the `wanted` entries of `inputs`; NaN with `poison`, so
        that elements the kernels fail to write show."""
        return {k: self.buffers.full_like(inputs[k], float("nan")) if poison
                else self.buffers.empty(inputs[k].shape, inputs[k]) for k in wanted}

    def forward_call(self, spec, inputs, dtype, budget=0):
        """(out, run): the output tensor (N, F, Ho, Wo) for `inputs` (tensors keyed by
        spec.inputs) and run(), which computes it on the current stream. The attributes, plan,
        scratch and pointers are prepared once, so that a timing of run() holds no Python work
        but the call itself."""
        b, data = self.buffers, inputs["data"]
        call = self._call(spec, dtype, budget=budget)
        _, _, scratch_bytes = self.plan(spec, dtype, budget=budget)
        scratch, out = b.scratch(scratch_bytes, data), b.empty(spec.out_shape, data)
        pointers = self._pointers([inputs[k] for k in spec.inputs])

        def run():
            self._check(self.lib.dcnv2_standalone_forward(
                ctypes.byref(call), pointers, b.pointer(out), b.pointer(scratch), scratch_bytes,
                b.stream()))
        return out, run

    def forward(self, spec, inputs, dtype, budget=0):
        """The output (N, F, Ho, Wo) for `inputs` (tensors keyed by spec.inputs), computed on
        the current stream."""
        out, run = self.forward_call(spec, inputs, dtype, budget)
        run()
        return out

    def backward_call(self, spec, inputs, out_grad, dtype, deterministic, budget=0, wanted=None,
                      poison=True):
        """(grads, run): gradient tensors keyed like `inputs` (only the `wanted` ones, default
        all) and run(), which computes them for the output gradient (N, F, Ho, Wo) on the
        current stream, prepared as forward_call's. With `poison` they start as NaN, so that
        elements the kernels fail to write show."""
        wanted = spec.inputs if wanted is None else wanted
        _, _, scratch_bytes = self.plan(spec, dtype, True, deterministic, budget)
        return self._prepared_backward(self.lib.dcnv2_standalone_backward,
                                       self._call(spec, dtype, deterministic, budget), spec,
                                       inputs, out_grad, wanted, poison, scratch_bytes)

    def _prepared_backward(self, entry, call, spec, inputs, out_grad, wanted, poison,
                           scratch_bytes):
        """(grads, run) of backward_call and psroi_backward_call: `entry` is the C function,
        `call` its call description."""
        b = self.buffers
        scratch = b.scratch(scratch_bytes, out_grad)
        grads = self._gradient_buffers(inputs, wanted, poison)
        in_pointers = self._pointers([inputs[k] for k in spec.inputs])
        grad_pointers = self._pointers([grads.get(k) for k in spec.inputs])

        def run():
            self._check(entry(ctypes.byref(call), b.pointer(out_grad), in_pointers,
                              grad_pointers, b.pointer(scratch), scratch_bytes, b.stream()))
        return grads, run

    def backward(self, spec, inputs, out_grad, dtype, deterministic, budget=0, wanted=None,
                 poison=True):
        """Gradients (tensors keyed like `inputs`; only the `wanted` ones, default all) for the
        output gradient (N, F, Ho, Wo), computed on the current stream. With `poison` they start
        as NaN, so that elements the kernels fail to write show."""
        grads, run = self.backward_call(spec, inputs, out_grad, dtype, deterministic, budget,
                                        wanted, poison)
        run()
        return grads

    def psroi_scratch_bytes(self, spec, dtype, data_grad=True, part_grads=True,
                            deterministic=False):
        """Device scratch bytes of a PS-RoI pooling backward call described by a PSROISpec that
        wants the data gradient (`data_grad`) or not and the offset and mask gradients
        (`part_grads`) or not; the forward takes none. No GPU needed."""
        scratch = ctypes.c_uint64()
        self._check(self.lib.dcnv2_standalone_psroi_scratch_bytes(
            ctypes.byref(self._psroi_call(spec, dtype, deterministic)), int(data_grad),
            int(part_grads), ctypes.byref(scratch)))
        return scratch.value

    def psroi_forward_call(self, spec, inputs, dtype):
        """(out, run): the PS-RoI pooling output (R, output_dim, P, P) for `inputs` (tensors
        keyed by spec.inputs) and run(), which computes it on the current stream."""
        b = self.buffers
        out = b.empty(spec.out_shape, inputs["data"])
        call = self._psroi_call(spec, dtype)
        pointers = self._pointers([inputs[k] for k in spec.inputs])

        def run():
            self._check(self.lib.dcnv2_standalone_psroi_forward(
                ctypes.byref(call), pointers, b.pointer(out), b.stream()))
        return out, run

    def psroi_forward(self, spec, inputs, dtype):
        """The PS-RoI pooling output (R, output_dim, P, P) for `inputs` (tensors keyed by
        spec.inputs), computed on the current stream."""
        out, run = self.psroi_forward_call(spec, inputs, dtype)
        run()
        return out

    def psroi_backward_call(self, spec, inputs, out_grad, dtype, deterministic, wanted=None,
                            poison=True):
        """(grads, run): PS-RoI pooling gradient tensors keyed like `inputs` (only the `wanted`
        ones, default all, the rois one zero) and run(), which computes them for the output
        gradient (R, output_dim, P, P) on the current stream. With `poison` they start as
        NaN."""
        wanted = spec.inputs if wanted is None else wanted
        scratch_bytes = self.psroi_scratch_bytes(spec, dtype, "data" in wanted,
                                                 bool({"trans", "mask"} & set(wanted)),
                                                 deterministic)
        return self._prepared_backward(self.lib.dcnv2_standalone_psroi_backward,
                                       self._psroi_call(spec, dtype, deterministic), spec,
                                       inputs, out_grad, wanted, poison, scratch_bytes)

    def psroi_backward(self, spec, inputs, out_grad, dtype, deterministic, wanted=None,
                       poison=True):
        """PS-RoI pooling gradients (tensors keyed like `inputs`; only the `wanted` ones, default
        all, the rois one zero) for the output gradient (R, output_dim, P, P), computed on the
        current stream. With `poison` they start as NaN."""
        grads, run = self.psroi_backward_call(spec, inputs, out_grad, dtype, deterministic,
                                              wanted, poison)
        run()
        return grads


# ------------------------------------------------------------------------------------------
# PS-RoI pooling problems

#: Kinds of RoI of a PSROIInputs problem: "random" (on the image, many of them partly off
#: it), "inverted" (x2 < x1 and y2 < y1: a window 0.1 feature pixels wide), "outside" (off the
#: image beyond any offset's reach: pools to 0), "nan-trans" (offsets of the first row of part
#: cells NaN: those bins pool to 0), "large-trans" (offsets of +6e4, still finite in float16,
#: and -30, which move bins off the map).
ROI_KINDS = ("random", "inverted", "outside", "nan-trans", "large-trans")

#: Least distance, in feature pixels, of every sample from the lines where it stops counting
#: (-0.5 and size - 0.5) and, with offsets, of every used sample from the grid lines, where the
#: offset gradient jumps. float32 positions are some 1e-5 off the reference's float64 ones, so
#: closer samples could count or fall on either side in one and not the other.
SAMPLE_CLEARANCE = 1e-4


def rounded(array, dtype):
    """`array` rounded to `dtype`, stored as float64."""
    return np.asarray(array).astype(dtype).astype(np.float64)


def _float32(value):
    """A real parameter as the operators hold it (float32, like MXNet's)."""
    return float(np.float32(value))


def samples_used(positions, height, width):
    """Which samples (n, 2) (y, x) count on a height x width map: both coordinates within
    [-0.5, size - 0.5] (not NaN)."""
    sizes = np.array([height, width], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ((positions >= -0.5) & (positions <= sizes - 0.5)).all(axis=1)


def samples_keep_clear(positions, height, width, offsets):
    """Whether the samples (n, 2) (y, x) keep SAMPLE_CLEARANCE from the border lines and, with
    `offsets` (whose gradient depends on the side of a grid line a sample lies on), used ones
    also from the grid lines. Samples at non-finite positions never count and need no room."""
    finite = positions[np.isfinite(positions).all(axis=1)]
    sizes = np.array([height, width], dtype=np.float64)
    border = np.minimum(np.abs(finite + 0.5), np.abs(finite - (sizes - 0.5)))
    if (border < SAMPLE_CLEARANCE).any():
        return False
    used = finite[samples_used(finite, height, width)]
    return not offsets or bool((np.abs(used - np.round(used)) >= SAMPLE_CLEARANCE).all())


class PSROIInputs:
    """One (modulated) deformable PS-RoI pooling call: its parameters, random inputs holding
    values of `dtype` (stored as float64) and its float64 reference results (reference.psroi).

    Attributes: `params` (the operator's keyword parameters, no_trans and no_mask included),
    `spec` (PSROISpec), `roi_kinds` (the kind, ROI_KINDS, of each RoI) and `arrays` (in input
    order: data (N, output_dim*Gh*Gw, H, W), rois (R, 5), [trans (R, 2*K, part_h, part_w)],
    [mask (R, K, part_h, part_w)]). Sizes are an int or an (h, w) pair. There are `num_rois`
    random RoIs, then one of each kind in `special`; their batch indices cover the batch, or
    are all 0 with `same_image`. A RoI is drawn again until its samples keep clear
    (samples_keep_clear) in the rounded values.
    """

    def __init__(self, rng, dtype="float64", batch=2, output_dim=4, group_size=3, height=9,
                 width=8, pooled_size=3, part_size=0, sample_per_part=2, num_classes=1,
                 spatial_scale=0.5, trans_std=0.1, no_trans=False, with_mask=True, num_rois=6,
                 special=(), same_image=False):
        self.params = dict(spatial_scale=spatial_scale, output_dim=output_dim,
                           group_size=group_size, pooled_size=pooled_size, part_size=part_size,
                           sample_per_part=sample_per_part, trans_std=trans_std,
                           no_trans=no_trans, no_mask=not with_mask)
        self.roi_kinds = ["random"] * num_rois + list(special)
        if no_trans and {"nan-trans", "large-trans"} & set(special):
            raise ValueError("RoIs with special offsets need offsets (no_trans=False)")
        self.dtype = dtype
        channels = output_dim * np.prod(size_pair(group_size))
        self.spec = psroi_spec(self.params, (batch, channels, height, width),
                               len(self.roi_kinds), num_classes)
        rois, trans, mask = zip(*[self._draw_roi(rng, kind) for kind in self.roi_kinds])
        rois = np.array(rois)
        if not same_image:  # every image of the batch, then random ones
            rois[:, 0] = rng.randint(0, batch, len(rois))
            rois[:batch, 0] = np.arange(min(batch, len(rois)))
        self.arrays = {"data": rounded(rng.uniform(-1, 1, self.spec.shape), dtype), "rois": rois}
        if not no_trans:
            self.arrays["trans"] = np.array(trans)
        if with_mask:
            self.arrays["mask"] = np.array(mask)

    @property
    def out_shape(self):
        return self.spec.out_shape

    def _part_size(self):
        """(part_h, part_w), 0 standing for the pooled size."""
        return tuple(part or pooled for part, pooled in zip(size_pair(self.params["part_size"]),
                                                            size_pair(self.params["pooled_size"])))

    def _draw_roi(self, rng, kind, attempts=1000):
        """(rois row (5,) with batch index 0, offsets (2*K, part_h, part_w), mask (K, ...))
        of a RoI of `kind`, rounded to the dtype, whose samples keep clear."""
        _, _, height, width = self.spec.shape
        part, classes = self._part_size(), self.spec.num_classes
        for _ in range(attempts):
            roi = rounded(np.concatenate([[0.0], self._roi_corners(rng, kind)]), self.dtype)
            trans = rounded(self._roi_offsets(rng, kind), self.dtype)
            if samples_keep_clear(self.sample_positions(roi, trans), height, width,
                                  offsets=not self.params["no_trans"]):
                return roi, trans, rounded(rng.uniform(0, 1, (classes,) + part), self.dtype)
        raise AssertionError(f"no {kind} RoI out of {attempts} keeps its samples clear")

    def _roi_corners(self, rng, kind):
        """(x1, y1, x2, y2) in image pixels of a RoI of `kind`."""
        scale = self.params["spatial_scale"]
        img_w, img_h = self.spec.shape[3] / scale, self.spec.shape[2] / scale
        if kind == "outside":  # up and left by 2 to 3 image sizes, at most half an image large
            x1, y1 = rng.uniform(-3, -2) * img_w, rng.uniform(-3, -2) * img_h
            return x1, y1, x1 + rng.uniform(2, 0.5 * img_w), y1 + rng.uniform(2, 0.5 * img_h)
        if kind == "inverted":
            x1, y1 = rng.uniform(0.3, 0.9) * img_w, rng.uniform(0.3, 0.9) * img_h
            return x1, y1, x1 - rng.uniform(2, 0.25 * img_w), y1 - rng.uniform(2, 0.25 * img_h)
        x1, y1 = rng.uniform(-0.3, 0.7) * img_w, rng.uniform(-0.3, 0.7) * img_h
        return x1, y1, x1 + rng.uniform(2, 0.8 * img_w), y1 + rng.uniform(2, 0.8 * img_h)

    def _roi_offsets(self, rng, kind):
        """Offsets (2*K, part_h, part_w) of a RoI of `kind`: x then y per class."""
        trans = rng.normal(0, 1, (2 * self.spec.num_classes,) + self._part_size())
        if kind == "nan-trans":
            trans[:, 0] = np.nan
        elif kind == "large-trans":
            trans[0::2, -1] = 6e4  # x of the last row of cells: far right
            trans[1::2, 0, 0] = -30  # y of the first cell: three RoI heights up
        return trans

    def sample_positions(self, roi, trans):
        """Positions (y, x) of every sample of one RoI, (K * Ph * Pw * S * S, 2), given its
        rois row (5,) and offsets (2*K, part_h, part_w) (ignored with no_trans)."""
        p = self.params
        (Ph, Pw), (part_h, part_w) = size_pair(p["pooled_size"]), self._part_size()
        sampling = dict(spatial_scale=_float32(p["spatial_scale"]), pooled_size=(Ph, Pw),
                        sample_per_part=p["sample_per_part"], trans_std=_float32(p["trans_std"]))
        positions = []
        for cls, ph, pw in itertools.product(range(self.spec.num_classes), range(Ph),
                                             range(Pw)):
            cell = (part_index(ph, Ph, part_h), part_index(pw, Pw, part_w))
            offset_xy = (0.0, 0.0) if p["no_trans"] else (trans[2 * cls][cell],
                                                          trans[2 * cls + 1][cell])
            positions += bin_sample_positions(roi, offset_xy, ph, pw, sampling)
        return np.array(positions, dtype=np.float64)

    def with_rois(self, rows):
        """The problem restricted to the RoIs `rows`."""
        subset = copy.copy(self)
        subset.arrays = {k: v if k == "data" else v[rows] for k, v in self.arrays.items()}
        subset.roi_kinds = [self.roi_kinds[r] for r in rows]
        subset.spec = psroi_spec(self.params, self.spec.shape, len(rows), self.spec.num_classes)
        return subset

    def reference(self, out_grad):
        """The float64 reference: output (R, output_dim, P, P) and the gradients of every input
        for `out_grad` (R, output_dim, P, P), keyed like `arrays` (the rois one zero)."""
        reference_params = {k: v for k, v in self.params.items()
                            if k not in ("no_trans", "no_mask")}
        out, grads = psroi_pooling(self.arrays["data"], self.arrays["rois"],
                                   self.arrays.get("trans"), self.arrays.get("mask"),
                                   out_grad=out_grad, **reference_params)
        grads["rois"] = np.zeros_like(self.arrays["rois"])
        return out, {k: grads[k] for k in self.arrays}


def make_psroi_problem(case, dtype, seed=1234):
    """A PSROIInputs of PSROI_CASES-style keyword arguments, inputs rounded to `dtype`."""
    return PSROIInputs(np.random.RandomState(seed), dtype, **case)


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
        # Plain ints and floats: NumPy 2 would print np.int64(1) and np.float64(0.5).
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.where(bad, error, -1)),
                                                       error.shape))
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())} of {error.size} elements differ; worst at "
            f"{worst}: {float(actual[worst])!r} vs {float(expected[worst])!r} "
            f"(scale {scale:.3g})")


def as_dtype(problem, dtype):
    """The problem with its inputs rounded to `dtype` (stored as float64), so that the float64
    reference sees exactly the values the kernels get."""
    problem.arrays = {k: rounded(v, dtype) for k, v in problem.arrays.items()}
    return problem


def make_problem(case, dtype, seed=1234, offsets="jittered"):
    """A ConvInputs of CASES-style keyword arguments, inputs rounded to `dtype`."""
    return as_dtype(ConvInputs(np.random.RandomState(seed), offsets=offsets, **case), dtype)


def random_out_grad(shape, dtype, seed=99):
    """An output gradient of `shape` uniform in [-1, 1), as `dtype`."""
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(dtype)


def device_inputs(harness, arrays, dtype, device=None):
    """`arrays` (a dict of NumPy arrays) as the harness's tensors of `dtype` on `device`."""
    device = device or harness.buffers.default_device
    return {k: harness.buffers.put(v.astype(dtype), device) for k, v in arrays.items()}


def run_forward_backward(harness, arrays, out_grad, dtype, device, forward, backward):
    """forward(inputs) and backward(inputs, out_grad) of the harness, with `arrays` and
    `out_grad` copied to `device` as `dtype`, on a side stream: the output and the gradients
    (a dict) as float64 NumPy arrays."""
    b = harness.buffers
    device = device or b.default_device

    def body():
        inputs = device_inputs(harness, arrays, dtype, device)
        out = forward(inputs)
        grads = backward(inputs, b.put(out_grad, device))
        return b.get(out), {k: b.get(g) for k, g in grads.items()}

    return b.on_side_stream(body, device)


def assert_results_close(out, grads, expected_out, expected_grads, dtype):
    """The output and every gradient (dicts keyed by input) close to the expected ones."""
    assert_close("out", out, expected_out, dtype)
    assert sorted(grads) == sorted(expected_grads)
    for name, grad in grads.items():
        assert_close(name + " grad", grad, expected_grads[name], dtype)


def compare_with_reference(harness, problem, dtype, deterministic, budget=0, device=None,
                           expected_problem=None):
    """Forward and every gradient of `problem` against the float64 reference of
    `expected_problem` (default: the same problem)."""
    expected_problem = expected_problem or problem
    spec = spec_of(problem)
    out_grad = random_out_grad(problem.out_shape, dtype)
    out, grads = run_forward_backward(
        harness, problem.arrays, out_grad, dtype, device,
        lambda inputs: harness.forward(spec, inputs, dtype, budget),
        lambda inputs, dout: harness.backward(spec, inputs, dout, dtype, deterministic, budget))
    expected = expected_problem.reference_grads(out_grad.astype(np.float64))
    for name in grads:
        assert np.abs(expected[name]).max() > 0.1, name  # a gradient that can be wrong
    assert_results_close(out, grads, expected_problem.reference(), expected, dtype)


def check_case(harness, case, dtype, deterministic, device=None):
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


def assert_reproducible(harness, runs, partial_runs):
    """Every gradient of `runs` (dicts of tensors) is bit-identical across them, and so is each
    gradient of `partial_runs` (calls that asked for only some) to the first run's."""
    equal = harness.buffers.equal
    for name in runs[0]:
        for other in runs[1:]:
            assert equal(runs[0][name], other[name]), f"{name} grad differs between runs"
    for partial in partial_runs:
        for name, grad in partial.items():
            assert equal(grad, runs[0][name]), f"{name} grad differs when asked alone"


def assert_reproducible_backward(harness, arrays, out_grad, dtype, backward, runs,
                                 partial_wanted, expected_data_grad):
    """backward(inputs, out_grad, wanted) (a deterministic harness backward of `arrays` as
    `dtype`), `runs` times for every gradient and once per list of `partial_wanted`: every
    gradient bit-identical (assert_reproducible), the data gradient close to the expected."""
    b = harness.buffers

    def body():
        inputs = device_inputs(harness, arrays, dtype)
        dout = b.put(out_grad, b.default_device)
        full = [backward(inputs, dout, None) for _ in range(runs)]
        return full, [backward(inputs, dout, wanted) for wanted in partial_wanted]

    full, partial = b.on_side_stream(body, b.default_device)
    assert_reproducible(harness, full, partial)
    assert_close("data grad", b.get(full[0]["data"]), expected_data_grad, dtype)


def check_determinism(harness, dtype):
    """The deterministic data gradient is bit-identical across runs when many samples share
    corners; requesting only some gradients gives the same values."""
    problem = make_problem(DETERMINISM_CASE, dtype, offsets="clustered")
    spec = spec_of(problem)
    out_grad = random_out_grad(problem.out_shape, dtype, seed=5)
    assert_reproducible_backward(
        harness, problem.arrays, out_grad, dtype,
        lambda inputs, dout, wanted: harness.backward(spec, inputs, dout, dtype, True,
                                                      wanted=wanted),
        3, [["data"], ["weight"]], problem.reference_grads(out_grad.astype(np.float64))["data"])


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
    check_case(harness, CASES["b3-k3x2-s21-p10-d21-g2-dg2"], "float64", True,
               device=harness.buffers.second_device())


def compare_psroi_with_reference(harness, problem, dtype, deterministic, expected=None,
                                 device=None):
    """PS-RoI pooling forward and every gradient of `problem` (a PSROIInputs) against
    expected(out_grad) -> (out, grads), by default its float64 reference. Whether the expected
    values can catch an error is checked without a GPU (test_standalone_host.py)."""
    spec = problem.spec
    out_grad = random_out_grad(problem.out_shape, dtype)
    out, grads = run_forward_backward(
        harness, problem.arrays, out_grad, dtype, device,
        lambda inputs: harness.psroi_forward(spec, inputs, dtype),
        lambda inputs, dout: harness.psroi_backward(spec, inputs, dout, dtype, deterministic))
    expected_out, expected_grads = (expected or problem.reference)(out_grad.astype(np.float64))
    assert_results_close(out, grads, expected_out, expected_grads, dtype)


def check_psroi_case(harness, case, dtype, deterministic):
    """PS-RoI pooling forward and every gradient of one PSROI_CASES problem against the float64
    reference."""
    compare_psroi_with_reference(harness, make_psroi_problem(case, dtype), dtype, deterministic)


def check_psroi_determinism(harness, dtype):
    """The deterministic PS-RoI data gradient is bit-identical across two runs when many RoIs
    overlap on one image; requesting only some gradients gives the same values."""
    problem = make_psroi_problem(PSROI_DETERMINISM_CASE, dtype)
    spec = problem.spec
    out_grad = random_out_grad(problem.out_shape, dtype, seed=5)
    assert_reproducible_backward(
        harness, problem.arrays, out_grad, dtype,
        lambda inputs, dout, wanted: harness.psroi_backward(spec, inputs, dout, dtype, True,
                                                            wanted=wanted),
        2, [["data"], ["trans", "mask"]], problem.reference(out_grad.astype(np.float64))[1]["data"])


def check_psroi_batch_index_outside(harness, dtype, deterministic):
    """On the GPU a RoI whose batch index is not an image of the batch (-1, N, NaN) pools to 0
    and passes no gradient (the CPU raises an error instead): the other RoIs' results equal the
    reference of the problem without it, one with index -0.5 being image 0."""
    problem = make_psroi_problem(PSROI_CASES["p3-g3-cls2-s2"], dtype)
    batch, num_rois = problem.spec.shape[0], problem.spec.num_rois
    outside, kept = [1, 2, 3], [r for r in range(num_rois) if r not in (1, 2, 3)]
    bad = copy.copy(problem)
    bad.arrays = dict(problem.arrays, rois=problem.arrays["rois"].copy())
    bad.arrays["rois"][outside, 0] = [-1, batch, np.nan]
    assert bad.arrays["rois"][0, 0] == 0
    bad.arrays["rois"][0, 0] = -0.5  # still image 0: truncated toward zero
    valid = problem.with_rois(kept)

    def expected(out_grad):
        out, grads = valid.reference(out_grad[kept])
        full_out = np.zeros(problem.out_shape)
        full_out[kept] = out
        full_grads = {"data": grads["data"]}
        for name in problem.arrays.keys() - {"data"}:  # per RoI: zero for the skipped ones
            full_grads[name] = np.zeros_like(problem.arrays[name])
            full_grads[name][kept] = grads[name]
        return full_out, full_grads

    compare_psroi_with_reference(harness, bad, dtype, deterministic, expected)


def all_checks():
    """(name, function) of every check: the pytest module parametrizes over the same list."""
    checks = []
    for case_name, case in CASES.items():
        for dtype in TOLERANCES:
            for mode in MODES:
                checks.append((f"{case_name}-{dtype}-{mode}",
                               lambda h, c=case, d=dtype, m=mode:
                               check_case(h, c, d, m == "deterministic")))
    for tiling in TILINGS:
        for mode in MODES:
            checks.append((f"tiling-{tiling}-{mode}",
                           lambda h, t=tiling, m=mode: check_tiling(h, t, m == "deterministic")))
    for dtype in TOLERANCES:
        checks.append((f"determinism-{dtype}", lambda h, d=dtype: check_determinism(h, d)))
    checks.append(("non-finite-offsets-float32",
                   lambda h: check_non_finite_offsets(h, "float32")))
    checks.append(("second-gpu-float64", check_second_gpu))
    for case_name, case in PSROI_CASES.items():
        for dtype in TOLERANCES:
            for mode in MODES:
                checks.append((f"psroi-{case_name}-{dtype}-{mode}",
                               lambda h, c=case, d=dtype, m=mode:
                               check_psroi_case(h, c, d, m == "deterministic")))
    for dtype in TOLERANCES:
        checks.append((f"psroi-determinism-{dtype}",
                       lambda h, d=dtype: check_psroi_determinism(h, d)))
    for mode in MODES:
        checks.append((f"psroi-batch-index-outside-float32-{mode}",
                       lambda h, m=mode:
                       check_psroi_batch_index_outside(h, "float32", m == "deterministic")))
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
# Timings: the convolution against cuDNN and torchvision, the PS-RoI pooling alone

#: (name, N, C, H, W, F, deformable groups, stride) of the 3x3, pad-1 timings: the cases of the
#: CPU benchmark (python/dcnv2_mx/tools/benchmark.py, not imported: it needs MXNet, which a GPU
#: machine running this script may lack) and a batch-16 detector feature map.
BENCH_CASES = [("res_c3", 1, 128, 100, 136, 128, 1, 1), ("res_c4", 1, 256, 50, 68, 256, 1, 1),
               ("res_c5", 1, 512, 25, 34, 512, 1, 1), ("small", 2, 64, 56, 56, 64, 1, 1),
               ("batch8", 8, 64, 32, 32, 64, 1, 1), ("dg4", 2, 64, 32, 32, 64, 4, 1),
               ("strided", 2, 64, 56, 56, 64, 1, 2), ("detector", 4, 256, 64, 64, 256, 1, 1),
               ("detector16", 16, 256, 64, 64, 256, 1, 1)]


def _time_ms(fn, repeat, warmup=1):
    """Mean ms of `repeat` back-to-back calls of fn, by CUDA events, after `warmup` calls."""
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


def time_alternating(contenders, rounds=5, repeat=10):
    """{name: median ms} of the callables in `contenders` (a dict), timed in turn, round after
    round, so that a drift of the clocks or of the memory touches them all alike."""
    times = {name: [] for name in contenders}
    for name, fn in contenders.items():
        _time_ms(fn, 1, warmup=2)
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_time_ms(fn, repeat))
    return {name: float(np.median(t)) for name, t in times.items()}


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


class ConvBench:
    """One timing case: inputs of a DCNv2 3x3 convolution on cuda:0 and the contenders (ours,
    cuDNN's regular convolution, torchvision's deform_conv2d where installed), forward and
    forward+backward of every input."""

    def __init__(self, harness, case, dtype):
        import torch
        name, n, c, h, w, f, dg, stride = case
        self.name, self.dtype, self.stride = name, dtype, stride
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        dev, tdtype = "cuda:0", getattr(torch, dtype)
        gen = torch.Generator(device=dev).manual_seed(0)
        self.spec = ConvSpec(True, dict(kernel=(3, 3), pad=(1, 1), stride=(stride, stride),
                                        num_filter=f, num_deformable_group=dg),
                             (n, c, h, w), (n, f, ho, wo),
                             ["data", "offset", "mask", "weight", "bias"])
        shapes = {"data": (n, c, h, w), "offset": (n, 2 * dg * 9, ho, wo),
                  "mask": (n, dg * 9, ho, wo), "weight": (f, c, 3, 3), "bias": (f,)}
        draw = {"data": lambda s: torch.randn(s, device=dev, generator=gen),
                "offset": lambda s: torch.rand(s, device=dev, generator=gen) * 4 - 2,
                "mask": lambda s: torch.rand(s, device=dev, generator=gen),
                "weight": lambda s: torch.randn(s, device=dev, generator=gen) * (c * 9) ** -0.5,
                "bias": lambda s: torch.randn(s, device=dev, generator=gen)}
        self.inputs = {k: draw[k](shape).to(tdtype) for k, shape in shapes.items()}
        self.dout = torch.randn(self.spec.out_shape, device=dev, generator=gen).to(tdtype)
        self.harness = harness

    def ours(self):
        """{label: callable} of our forward and forward+backward (atomic, deterministic)."""
        h, spec, inputs, dtype = self.harness, self.spec, self.inputs, self.dtype
        _, forward = h.forward_call(spec, inputs, dtype)
        _, atomic = h.backward_call(spec, inputs, self.dout, dtype, False, poison=False)
        _, determ = h.backward_call(spec, inputs, self.dout, dtype, True, poison=False)
        return {"ours fwd": forward,
                "ours f+b atomic": lambda: (forward(), atomic()),
                "ours f+b determ.": lambda: (forward(), determ())}

    def cudnn(self):
        """{label: callable} of cuDNN's 3x3 convolution of the same shape (TF32 off)."""
        import torch
        import torch.nn.functional as F
        leaves = [self.inputs[k].clone().requires_grad_() for k in ("data", "weight", "bias")]
        stride = self.stride

        def forward():
            with torch.no_grad():
                F.conv2d(*leaves, stride=stride, padding=1)
        return {"cudnn fwd": forward,
                "cudnn f+b": lambda: torch.autograd.grad(
                    F.conv2d(*leaves, stride=stride, padding=1), leaves, self.dout)}

    def torchvision(self):
        """({label: callable}, {name: difference}) of torchvision.ops.deform_conv2d with our
        inputs: its forward and forward+backward, and how far its output and each gradient lie
        from ours (relative_error); ({}, None) without torchvision."""
        try:
            import torchvision
        except ImportError:
            return {}, None
        import torch
        names = ["data", "offset", "mask", "weight", "bias"]
        leaves = {k: self.inputs[k].clone().requires_grad_() for k in names}
        stride = self.stride

        def run(*xs):
            data, offset, mask, weight, bias = xs
            return torchvision.ops.deform_conv2d(data, offset, weight, bias, stride=stride,
                                                 padding=1, mask=mask)
        ordered = [leaves[k] for k in names]
        theirs = run(*ordered)
        their_grads = torch.autograd.grad(theirs, ordered, self.dout)
        ours = self.harness.forward(self.spec, self.inputs, self.dtype)
        our_grads = self.harness.backward(self.spec, self.inputs, self.dout, self.dtype, True)
        torch.cuda.synchronize()
        differences = {"out": relative_error(ours, theirs)}
        differences.update({k: relative_error(our_grads[k], g)
                            for k, g in zip(names, their_grads)})

        def forward():
            with torch.no_grad():
                run(*ordered)
        return ({"torchvision fwd": forward,
                 "torchvision f+b": lambda: torch.autograd.grad(run(*ordered), ordered,
                                                               self.dout)},
                differences)


def bench(harness, cases=BENCH_CASES, dtypes=("float32", "float16")):
    """Rows (dicts) of timings (ms, medians of alternating rounds): DCNv2 3x3 forward and
    forward+backward (atomic and deterministic data gradient) against cuDNN's 3x3 convolution
    of the same shape (TF32 off) and torchvision's deform_conv2d, with ratios, and the
    largest relative difference of torchvision's output and gradients from ours."""
    import torch
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for case in cases:
        for dtype in dtypes:
            setup = ConvBench(harness, case, dtype)
            try:
                tv, differences = setup.torchvision()
            except RuntimeError as error:  # e.g. a dtype its CUDA kernels lack
                print(f"torchvision on {case[0]} {dtype}: {error}")
                tv, differences = {}, None
            t = time_alternating({**setup.ours(), **setup.cudnn(), **tv})
            row = {"case": case[0], "shape": "{1}x{2}x{3}x{4}->{5} dg{6} s{7}".format(*case),
                   "dtype": dtype, **t,
                   "fwd / cudnn": t["ours fwd"] / t["cudnn fwd"],
                   "f+b atomic / cudnn": t["ours f+b atomic"] / t["cudnn f+b"],
                   "f+b determ. / cudnn": t["ours f+b determ."] / t["cudnn f+b"]}
            if tv:
                row.update({"fwd / torchvision": t["ours fwd"] / t["torchvision fwd"],
                            "f+b atomic / torchvision":
                                t["ours f+b atomic"] / t["torchvision f+b"],
                            "torchvision max rel. difference": max(differences.values())})
            rows.append(row)
            del setup
            torch.cuda.empty_cache()
    return rows


BENCH_COLUMNS = ["case", "dtype", "ours fwd", "cudnn fwd", "torchvision fwd", "fwd / cudnn",
                 "fwd / torchvision", "ours f+b atomic", "ours f+b determ.", "cudnn f+b",
                 "torchvision f+b", "f+b atomic / cudnn", "f+b determ. / cudnn",
                 "f+b atomic / torchvision", "torchvision max rel. difference"]


def bench_offset_filters(cases=BENCH_CASES, dtypes=("float32", "float16")):
    """Rows of cuDNN timings (ms) of a DCNv2 layer's offset/mask convolution, C -> 27 filters,
    against the same with 32 (the Gluon blocks round the filters up to a multiple of 8 with
    zero filters), forward and forward+backward."""
    import torch
    import torch.nn.functional as F
    rows = []
    for name, n, c, h, w, _, dg, stride in cases:
        if dg != 1:
            continue
        for dtype in dtypes:
            tdtype = getattr(torch, dtype)
            data = torch.randn(n, c, h, w, device="cuda:0", dtype=tdtype, requires_grad=True)
            contenders = {}
            for filters in (27, 32):
                weight = (torch.randn(filters, c, 3, 3, device="cuda:0", dtype=tdtype) * 0.01
                          ).requires_grad_()
                bias = torch.zeros(filters, device="cuda:0", dtype=tdtype, requires_grad=True)

                def forward(weight=weight, bias=bias):
                    return F.conv2d(data, weight, bias, stride=stride, padding=1)
                dout = torch.randn_like(forward())

                def no_grad(forward=forward):
                    with torch.no_grad():
                        forward()
                contenders[f"{filters} fwd"] = no_grad
                contenders[f"{filters} f+b"] = (
                    lambda forward=forward, weight=weight, bias=bias, dout=dout:
                    torch.autograd.grad(forward(), [data, weight, bias], dout))
            t = time_alternating(contenders)
            rows.append({"case": name, "dtype": dtype, **t,
                         "fwd 32 / 27": t["32 fwd"] / t["27 fwd"],
                         "f+b 32 / 27": t["32 f+b"] / t["27 f+b"]})
    return rows


OFFSET_FILTER_COLUMNS = ["case", "dtype", "27 fwd", "32 fwd", "fwd 32 / 27", "27 f+b", "32 f+b",
                         "f+b 32 / 27"]

#: The PS-RoI pooling timing: the modulated deformable RoI head of an 800x1088 image at stride
#: 16, 256 channels (group_size 1, one class), 512 RoIs, 7x7 bins of 2x2 samples.
PSROI_BENCH_PARAMS = dict(spatial_scale=0.0625, output_dim=256, group_size=1, pooled_size=7,
                          part_size=7, sample_per_part=2, trans_std=0.1, no_trans=False,
                          no_mask=False)
PSROI_BENCH_SHAPE, PSROI_BENCH_ROIS = (1, 256, 50, 68), 512


def psroi_bench_calls(harness, dtype):
    """{label: callable} of the PS-RoI pooling of PSROI_BENCH_*: forward, and forward and
    backward (data, trans and mask gradients) with the atomic and the deterministic data
    gradient."""
    import torch
    dev = "cuda:0"
    spec = psroi_spec(PSROI_BENCH_PARAMS, PSROI_BENCH_SHAPE, PSROI_BENCH_ROIS, 1)
    n, _, h, w = PSROI_BENCH_SHAPE
    image_size = torch.tensor([w, h], device=dev) / PSROI_BENCH_PARAMS["spatial_scale"]
    generator = torch.Generator(device=dev).manual_seed(0)
    # RoIs of 32 to 288 pixels a side, top-left corners (x1, y1) in the first 80% of the image.
    corner = torch.rand(PSROI_BENCH_ROIS, 2, device=dev, generator=generator) * 0.8 * image_size
    size = 32 + torch.rand(PSROI_BENCH_ROIS, 2, device=dev, generator=generator) * 256
    rois = torch.cat([torch.zeros(PSROI_BENCH_ROIS, 1, device=dev), corner, corner + size], 1)
    part = PSROI_BENCH_PARAMS["part_size"]
    inputs = {"data": torch.randn(spec.shape, device=dev, generator=generator), "rois": rois,
              "trans": torch.randn(PSROI_BENCH_ROIS, 2, part, part, device=dev,
                                   generator=generator),
              "mask": torch.rand(PSROI_BENCH_ROIS, 1, part, part, device=dev,
                                 generator=generator)}
    inputs = {k: v.to(getattr(torch, dtype)) for k, v in inputs.items()}
    dout = torch.randn(spec.out_shape, device=dev, generator=generator).to(inputs["data"].dtype)
    wanted = ["data", "trans", "mask"]
    _, forward = harness.psroi_forward_call(spec, inputs, dtype)
    _, atomic = harness.psroi_backward_call(spec, inputs, dout, dtype, False, wanted, False)
    _, determ = harness.psroi_backward_call(spec, inputs, dout, dtype, True, wanted, False)
    return {"fwd": forward, "f+b atomic": lambda: (forward(), atomic()),
            "f+b determ.": lambda: (forward(), determ())}


def bench_psroi(harness, dtypes=("float32", "float16")):
    """Rows of timings (ms) of psroi_bench_calls. No baseline: PyTorch has no deformable PS-RoI
    pooling."""
    n, c, h, w = PSROI_BENCH_SHAPE
    return [{"shape": f"{n}x{c}x{h}x{w}, {PSROI_BENCH_ROIS} RoIs, 7x7x2x2", "dtype": dtype,
             **time_alternating(psroi_bench_calls(harness, dtype))} for dtype in dtypes]


PSROI_BENCH_COLUMNS = ["shape", "dtype", "fwd", "f+b atomic", "f+b determ."]


def kernel_profile(harness, cases=BENCH_CASES, iterations=3):
    """Rows {what, kernel, calls, us per iteration} of the CUDA kernels (and memsets) of our
    float32 forward, forward+backward (atomic, deterministic) and torchvision's
    forward+backward on each case, and of the PS-RoI pooling, by PyTorch's profiler (CUPTI
    sees every kernel of the process, ours and cuBLAS's included)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    calls = []
    for case in cases:
        setup = ConvBench(harness, case, "float32")
        tv, _ = setup.torchvision()
        calls += [(f"{case[0]} {label}", fn) for label, fn in {**setup.ours(), **tv}.items()
                  if "fwd" not in label or label == "ours fwd"]
    calls += [(f"psroi {label}", fn) for label, fn in psroi_bench_calls(harness,
                                                                         "float32").items()]
    rows = []
    for what, fn in calls:
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iterations):
                fn()
            torch.cuda.synchronize()
        for event in prof.key_averages():
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = event.cuda_time_total
            if device_us > 0:
                rows.append({"what": what, "kernel": event.key[:90],
                             "calls": event.count / iterations,
                             "us per iteration": device_us / iterations})
    return rows


def print_profile(rows, top=6):
    """The `top` kernels of each profiled call, by time."""
    by_what = collections.defaultdict(list)
    for row in rows:
        by_what[row["what"]].append(row)
    for what, kernels in by_what.items():
        total = sum(k["us per iteration"] for k in kernels)
        print(f"{what}: {total:.0f} us")
        for k in sorted(kernels, key=lambda k: -k["us per iteration"])[:top]:
            print(f"    {k['us per iteration']:8.1f} us  x{k['calls']:.0f}  {k['kernel']}")


def environment():
    """The device and versions the timings were taken on."""
    import torch
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "device": torch.cuda.get_device_name(0),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    try:
        import torchvision
        versions["torchvision"] = torchvision.__version__
    except ImportError:
        versions["torchvision"] = None
    return versions


def format_table(columns, rows):
    """Plain-text table of the `columns` of `rows` (dicts, or lists in column order); floats
    with three significant digits, a missing value as '-'."""
    rows = [row if isinstance(row, dict) else dict(zip(columns, row)) for row in rows]
    cells = [[f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
              for c in columns] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
    line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def run_bench(harness, out_dir=None, profile=False):
    """Every timing, printed as tables and, with `out_dir`, written to
    out_dir/standalone_bench.json; with `profile` also the kernels of each call."""
    import json
    results = {"environment": environment()}
    print(results["environment"])
    results["psroi"] = bench_psroi(harness)
    print(format_table(PSROI_BENCH_COLUMNS, results["psroi"]))
    print("times in ms per call; f+b = forward + backward of data, trans and mask\n")
    results["offset_filters"] = bench_offset_filters()
    print(format_table(OFFSET_FILTER_COLUMNS, results["offset_filters"]))
    print("cuDNN, ms per call: the offset/mask convolution with 27 and with 32 filters\n")
    results["conv"] = bench(harness)
    print(format_table(BENCH_COLUMNS, results["conv"]))
    print("times in ms per call, medians of 5 alternating rounds; f+b = forward + backward of "
          "every input; the offset/mask convolution of a DCNv2 layer is not included")
    if profile:
        results["profile"] = kernel_profile(harness)
        print_profile(results["profile"])
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "standalone_bench.json"), "w") as f:
            json.dump(results, f, indent=1)


# ------------------------------------------------------------------------------------------
# Command line


def main(argv):
    out_dir = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--out=")), None)
    flags = {a for a in argv[1:] if a.startswith("--") and not a.startswith("--out=")}
    args = [a for a in argv[1:] if not a.startswith("--")]
    command = args[0] if args else "check"
    sanitizers = {"--asan": "address", "--tsan": "thread"}
    chosen = [sanitizers[f] for f in flags if f in sanitizers]
    sanitizer = chosen[0] if chosen else None
    emulated = "--emulated" in flags or sanitizer is not None
    if (flags - {"--emulated", "--profile", *sanitizers} or len(chosen) > 1
            or command not in ("build", "check", "bench")
            or ("--profile" in flags and command != "bench")):
        print(__doc__, file=sys.stderr)
        return 2
    if emulated and command == "bench":
        print("standalone: the emulation says nothing of speed; bench needs a GPU",
              file=sys.stderr)
        return 2
    try:
        if command == "build":
            print(build_harness(emulated=emulated, sanitizer=sanitizer))
            return 0
        if not emulated:
            require_gpu()
        environment = sanitizer_environment(sanitizer) if sanitizer else None
        path = build_harness(emulated=emulated, sanitizer=sanitizer)
        if sanitizer and environment["LD_PRELOAD"] != os.environ.get("LD_PRELOAD"):
            # The sanitizer's runtime must be loaded before Python starts.
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, *argv], environment)
        harness = Harness(path)
    except HarnessUnavailable as reason:
        print(f"standalone: cannot run here: {reason}", file=sys.stderr)
        return 2
    print(f"harness: {harness.path}")
    if command == "bench":
        run_bench(harness, out_dir, "--profile" in flags)
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
    if out_dir:
        import json
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "standalone_checks.json"), "w") as f:
            json.dump([dict(zip(["check", "result", "seconds"], r)) for r in rows], f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
