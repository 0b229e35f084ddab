"""Builds variants of the library from source for the tests that need one (the OpenBLAS-only
build, the clang build, the build with emulated CUDA), with the CMake and Ninja of PyPI's cmake
and ninja packages (test requirements), and runs test files on such a library."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_library(build_dir, *options, target="dcnv2_mx"):
    """Path of lib<target>.so (the library, or a test library such as dcnv2_mx_cuda_emulation)
    configured with the CMake `options` ("-DNAME=VALUE") and built in `build_dir` (Release);
    raises AssertionError with CMake's output if either step fails."""
    import cmake
    import ninja

    cmake_bin = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    configure = [cmake_bin, "-S", ROOT, "-B", str(build_dir), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={os.path.join(ninja.BIN_DIR, 'ninja')}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
                 *options]
    for command in (configure, [cmake_bin, "--build", str(build_dir), "--parallel", "--target", target]):
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return os.path.join(str(build_dir), f"lib{target}.so")


def assert_tests_pass_with(library, *pytest_args):
    """Runs pytest with `pytest_args` (test files of tests/ and options) in a separate process
    that loads `library` (DCNV2_MX_LIBRARY); raises AssertionError with its output unless some
    tests ran and all passed."""
    env = dict(os.environ, DCNV2_MX_LIBRARY=library)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *pytest_args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
