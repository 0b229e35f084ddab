"""Builds the dcnv2_mx operator library with CMake against the installed mxnet wheel.

The library must match the MXNet that will load it, so the build looks up the mxnet package of
the environment being installed into (pip's isolated build environment does not contain it) and
compiles against the lib_api.h / lib_api.cc that ship inside that wheel. The CUDA library is built
too when nvcc is found and that MXNet has CUDA (or DCNV2_MX_CUDA=1 forces it).
"""
import functools
import json
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

_PROBE = (
    "import importlib.util, json, os, sys\n"
    "spec = importlib.util.find_spec('mxnet')\n"
    "root = os.path.dirname(spec.origin)\n"
    "import mxnet\n"
    "print(json.dumps({'root': root, 'version': mxnet.__version__,\n"
    "                  'cuda': mxnet.runtime.Features().is_enabled('CUDA')}))\n")


@functools.lru_cache(maxsize=None)
def find_target_mxnet():
    """The mxnet of the target environment: importable here, or outside pip's build isolation."""
    if os.environ.get("MXNET_ROOT"):
        root = os.environ["MXNET_ROOT"]
        return {"root": root, "version": os.environ.get("MXNET_VERSION", ""),
                "cuda": os.environ.get("DCNV2_MX_CUDA") == "1"}
    envs = [os.environ,
            {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}]
    for env in envs:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
    raise RuntimeError("dcnv2_mx needs MXNet installed first: pip install 'mxnet==1.9.1' "
                       "'numpy<1.24' (or mxnet-cu112==1.9.1 for GPUs)")


#: float GEMMs (pyproject.toml asks for its headers); where PyPI has no oneDNN wheel, OpenBLAS
#: does them (CMakeLists.txt, DCNV2_MX_ONEDNN).
ONEDNN_REQUIREMENT = ("onednn-cpu-gomp==2023.2.0; "
                      "sys_platform == 'linux' and platform_machine == 'x86_64'")


#: What configured a build folder last (cmake, its arguments, the compiler asked for in CXX),
#: written next to CMake's cache.
CONFIGURATION_FILE = "dcnv2_mx_configuration.json"


def start_afresh_unless_configured(build_dir, configuration):
    """Empties `build_dir` unless `configuration` configured it last. A CMake cache names the
    cmake, ninja and libraries of the environment that configured it, and pip deletes its
    isolated build environment after each build: a second `pip install .` (or `make` after an
    edit) would otherwise find a cache that names programs and files that are gone."""
    try:
        with open(os.path.join(build_dir, CONFIGURATION_FILE)) as f:
            if json.load(f) == configuration:
                return
    except (OSError, ValueError):
        pass
    shutil.rmtree(build_dir, ignore_errors=True)


class CMakeExtension(Extension):
    def __init__(self, name, cuda):
        super().__init__(name, sources=[])
        self.cuda = cuda


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import scipy_openblas32

        mxnet = find_target_mxnet()
        # The library is the extension module's file: setuptools then installs it (and copies it
        # into the source tree for editable installs) like any extension.
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        want_cuda = ext.cuda
        build_dir = os.path.join(os.path.abspath(self.build_temp), ext.name)
        cmake_args = [
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMXNET_ROOT={mxnet['root']}",
            f"-DOPENBLAS_ROOT={os.path.dirname(scipy_openblas32.__file__)}",
            f"-DMXNET_VERSION={mxnet['version']}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={os.path.dirname(target)}",
            f"-DDCNV2_MX_LIBRARY_FILE={os.path.basename(target)}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DDCNV2_MX_RELOCATABLE=ON",
            f"-DDCNV2_MX_CUDA={'ON' if want_cuda else 'OFF'}",
            f"-DDCNV2_MX_NATIVE={os.environ.get('DCNV2_MX_NATIVE', 'OFF')}",
            f"-DDCNV2_MX_CUDA_ARCHS={os.environ.get('DCNV2_MX_CUDA_ARCHS', '')}",
        ]
        if "DCNV2_MX_ONEDNN" in os.environ:  # ON/OFF; by default CMake picks by platform
            cmake_args.append(f"-DDCNV2_MX_ONEDNN={os.environ['DCNV2_MX_ONEDNN']}")
        ninja = shutil.which("ninja")
        if ninja:
            cmake_args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={os.path.realpath(ninja)}"]
        cmake = shutil.which("cmake") or "cmake"
        # CMake reads CXX only when it configures a folder afresh.
        configuration = {"cmake": cmake, "arguments": cmake_args, "CXX": os.environ.get("CXX")}
        start_afresh_unless_configured(build_dir, configuration)
        subprocess.check_call([cmake, "-S", HERE, "-B", build_dir] + cmake_args)
        with open(os.path.join(build_dir, CONFIGURATION_FILE), "w") as f:
            json.dump(configuration, f)
        subprocess.check_call([cmake, "--build", build_dir, "--parallel"])


def extensions():
    """The CPU library always; the CUDA library when nvcc exists and MXNet has CUDA."""
    exts = [CMakeExtension("dcnv2_mx.libdcnv2_mx", cuda=False)]
    forced = os.environ.get("DCNV2_MX_CUDA")
    if forced == "1" or (forced is None and shutil.which("nvcc") and find_target_mxnet()["cuda"]):
        exts.append(CMakeExtension("dcnv2_mx.libdcnv2_mx_cuda", cuda=True))
    return exts


setup(
    name="dcnv2-mx",
    version="0.1.0",
    description="Deformable ConvNets v2 (DCNv2) operators for Apache MXNet, CPU and CUDA",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.7",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=extensions(),
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy<1.24", "scipy-openblas32>=0.3.27", ONEDNN_REQUIREMENT],
    extras_require={"test": ["pytest", "hypothesis"],
                    "gluoncv": ["gluoncv==0.10.5.post0"],
                    "cli": ["matplotlib", "tqdm"],
                    "onnx": ["onnx>=1.14,<1.19", "onnxruntime>=1.25"],
                    "bench": ["openvino", "onnx>=1.14,<1.19", "onnxruntime>=1.25"]},
    entry_points={"console_scripts": ["dcnv2-mx=dcnv2_mx.tools.cli:main"]},
    zip_safe=False,
)
