"""Loading the compiled operator library into the running MXNet, exactly once."""
import ctypes
import glob
import os
import threading

import mxnet as mx

__all__ = ["load", "loaded_path", "library_candidates", "cpu_kernels", "LibraryError"]

#: Environment variable that points at a library file to load instead of the installed one.
ENV_LIBRARY = "DCNV2_MX_LIBRARY"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_loaded_path = None


class LibraryError(RuntimeError):
    """The operator library is missing, or was built for another MXNet."""


def _mxnet_has_cuda():
    return mx.runtime.Features().is_enabled("CUDA")


def library_candidates():
    """Library file patterns this MXNet can use, best first: CUDA build (if MXNet has CUDA), CPU build."""
    names = (["libdcnv2_mx_cuda"] if _mxnet_has_cuda() else []) + ["libdcnv2_mx"]
    return [os.path.join(_PACKAGE_DIR, n + ".*so") for n in names]


def _gemm_libraries():
    """Paths of OpenBLAS (scipy-openblas32) and oneDNN (onednn-cpu-gomp), where installed."""
    import importlib.metadata

    import scipy_openblas32
    blas_dir = scipy_openblas32.get_lib_dir()
    found = sorted(glob.glob(os.path.join(blas_dir, "libscipy_openblas*.so*")))[:1]
    try:
        dist = importlib.metadata.distribution("onednn-cpu-gomp")
        # Only files that exist: where the metadata points elsewhere (a relocated environment),
        # the library's $ORIGIN RPATH finds oneDNN.
        found += [path for path in (str(dist.locate_file(f)) for f in dist.files or ()
                                    if f.name == "libdnnl.so.3") if os.path.exists(path)]
    except importlib.metadata.PackageNotFoundError:
        pass  # then the library's RPATH has to find it, or opening it names what is missing
    return found


def _open_checked(path):
    """Opens the library with ctypes and refuses one built against another MXNet version."""
    try:
        # The GEMM libraries that the library links; found through its RPATH when installed,
        # and through these preloads in any other layout (editable installs, build trees).
        for dependency in _gemm_libraries():
            ctypes.CDLL(dependency, mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise LibraryError(f"cannot open the dcnv2_mx library {path}: {err}") from err
    built_for = lib.dcnv2_mx_built_for_mxnet
    built_for.restype = ctypes.c_char_p
    version = built_for().decode()
    if version != mx.__version__:
        raise LibraryError(
            f"{path} was built for MXNet {version} but MXNet {mx.__version__} is installed; "
            "rebuild it against this MXNet (pip install --force-reinstall --no-deps .)")


def load():
    """Loads the operator library into MXNet once per process (thread-safe, idempotent).

    Returns the path of the loaded library. Raises :class:`LibraryError` naming the path when
    the library is missing or was built for another MXNet.
    """
    global _loaded_path
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        override = os.environ.get(ENV_LIBRARY)
        if override:
            path = os.path.abspath(override)
            if not os.path.exists(path):
                raise LibraryError(f"{ENV_LIBRARY}={override}: no such file {path}")
        else:
            found = [p for pattern in library_candidates() for p in sorted(glob.glob(pattern))]
            if not found:
                raise LibraryError(
                    "dcnv2_mx operator library not found; looked for "
                    + ", ".join(library_candidates())
                    + ". Install the package with `pip install .` from the source tree "
                    f"(or set {ENV_LIBRARY} to a built libdcnv2_mx.so)")
            path = found[0]
        _open_checked(path)
        mx.library.load(path, False)
        _loaded_path = path
        return path


def loaded_path():
    """Path of the loaded library, or None before :func:`load`."""
    return _loaded_path


def cpu_kernels():
    """The instruction set of the CPU kernels that run in the loaded library: the widest build
    of them this CPU supports, e.g. ``"x86-64-v3 (AVX2, FMA)"`` (``DCNV2_MX_CPU_ISA=x86-64-v2``
    picks a narrower one), or ``"native (-march=native)"`` for a DCNV2_MX_NATIVE build."""
    isa = ctypes.CDLL(load()).dcnv2_mx_cpu_isa
    isa.restype = ctypes.c_char_p
    return isa().decode()
