"""The library built with clang instead of GCC (CMakeLists.txt accepts both): it must compile, keep
AVX out of its baseline code, and pass the convolution tests. clang 14 once refused the CPU
dispatch's feature test (__builtin_cpu_supports("f16c")) while GCC built everything, so clang's
build is checked here rather than assumed. About 20 s to build on two cores, tests in a separate
pytest process, as for the OpenBLAS build (test_gemm_fallback.py)."""
import os
import platform
import shutil
import subprocess

import pytest

from cmake_build import ROOT, assert_tests_pass_with, build_library


def clang_with_openmp():
    """clang++ if it is installed and compiles an OpenMP program (libomp-dev), else None."""
    clang = shutil.which("clang++")
    if clang is None:
        return None
    probe = subprocess.run([clang, "-fopenmp", "-x", "c++", "-", "-fsyntax-only"],
                           input="#include <omp.h>\nint main() { return omp_get_max_threads(); }\n",
                           capture_output=True, text=True)
    return clang if probe.returncode == 0 else None


CLANG = clang_with_openmp()
pytestmark = pytest.mark.skipif(CLANG is None, reason="needs clang++ with OpenMP (libomp-dev)")


@pytest.fixture(scope="module")
def clang_library(tmp_path_factory):
    """Path of a libdcnv2_mx.so built by clang++."""
    return build_library(tmp_path_factory.mktemp("build-clang"), f"-DCMAKE_CXX_COMPILER={CLANG}")


def test_library_is_built_by_clang_in_the_default_configuration(clang_library):
    # The compilers that built its objects (the C runtime's own objects name GCC).
    comment = subprocess.run(["readelf", "-p", ".comment", clang_library],
                             capture_output=True, text=True, check=True).stdout
    assert "clang version" in comment, comment
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        with open(clang_library, "rb") as library:
            assert b"dnnl_sgemm" in library.read()  # float GEMMs by oneDNN, as in pip's build


def test_clang_build_passes_the_convolution_and_cpu_isa_tests(clang_library):
    assert_tests_pass_with(clang_library, os.path.join(ROOT, "tests", "test_deformable_conv.py"),
                           os.path.join(ROOT, "tests", "test_cpu_isa.py"))
