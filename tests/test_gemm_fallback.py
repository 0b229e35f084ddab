"""The build without oneDNN, which every platform but x86-64 Linux gets (PyPI has oneDNN wheels
for that one only): CMake with DCNV2_MX_ONEDNN=OFF must build a library whose float GEMMs go to
OpenBLAS, and that library must pass the float32 convolution tests. The library is built from
source here (about 20 s on two cores) and loaded in a separate pytest process."""
import os

import pytest

from cmake_build import ROOT, assert_tests_pass_with, build_library


@pytest.fixture(scope="module")
def openblas_library(tmp_path_factory):
    """Path of a libdcnv2_mx.so built with DCNV2_MX_ONEDNN=OFF."""
    return build_library(tmp_path_factory.mktemp("build-openblas"), "-DDCNV2_MX_ONEDNN=OFF")


def test_openblas_build_does_not_use_onednn(openblas_library):
    with open(openblas_library, "rb") as library:
        binary = library.read()
    assert b"dnnl_sgemm" not in binary and b"libdnnl" not in binary
    assert b"scipy_cblas_sgemm" in binary


def test_openblas_build_passes_the_float32_convolution_tests(openblas_library):
    assert_tests_pass_with(openblas_library, "-k", "float32",
                           os.path.join(ROOT, "tests", "test_deformable_conv.py"))
