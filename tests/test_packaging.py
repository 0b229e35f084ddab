"""Packaging, as a user does it, in a copy of the source tree: `pip wheel .` builds a wheel that a
fresh virtual environment installs and runs (the library finds its GEMM libraries through
$ORIGIN-relative RPATHs only, and names no folder of the building machine); then, after a source
file is edited, `pip install .` in the same tree builds and installs again. Each pip build runs
in its own isolated build environment, which pip deletes afterwards: the second one used to
fail on the CMake cache of the first, which named that environment's ninja (`make test` after an
edit ran into the same). Two full builds, each fetching the build requirements of
pyproject.toml like `make setup` does (from PyPI or pip's cache): about 2-3 minutes on two
cores. The fresh environment gets the runtime requirements linked in from this one, in the
layout pip gives them (site-packages/scipy_openblas32, oneDNN in <prefix>/lib)."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import scipy_openblas32

from cmake_build import ROOT

#: pip, run by this interpreter for the fresh environment (--python), patient with the network.
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--timeout", "60",
       "--retries", "5"]

_FORWARD = textwrap.dedent("""
    import mxnet as mx
    import dcnv2_mx
    x = mx.nd.ones((1, 2, 5, 5))
    out = mx.nd.contrib.DeformableConvolutionV2(
        x, mx.nd.zeros((1, 18, 5, 5)), mx.nd.ones((1, 9, 5, 5)), mx.nd.ones((3, 2, 3, 3)),
        mx.nd.zeros(3), kernel=(3, 3), pad=(1, 1), num_filter=3)
    assert out.shape == (1, 3, 5, 5) and float(out[0, 0, 2, 2].asscalar()) == 18.0
    print(dcnv2_mx.library.loaded_path())
""")


#: The environment of every command: none of this test run's ways to reach another dcnv2_mx.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "DCNV2_MX_LIBRARY", "LD_LIBRARY_PATH", "LD_PRELOAD")}


def run(command, **kwargs):
    proc = subprocess.run(command, capture_output=True, text=True, env=CLEAN_ENV, **kwargs)
    assert proc.returncode == 0, (" ".join(command) + "\n" + proc.stdout[-4000:] +
                                  proc.stderr[-4000:])
    return proc.stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the source tree without build products."""
    copy = tmp_path_factory.mktemp("packaging") / "dcnv2-mx"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "build-*", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "*.so"))
    return copy


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """The python of a fresh virtual environment that sees this one's packages (MXNet, NumPy;
    not dcnv2_mx) behind its own, and has OpenBLAS and oneDNN where pip installs them."""
    path = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = str(path / "bin" / "python")
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = site.strip()
    # This environment's packages but any dcnv2_mx, linked into a folder that the .pth file adds,
    # next to site-packages: files a package installed outside it (oneDNN's library) keep their
    # relative paths.
    shared = os.path.join(os.path.dirname(site), "shared-site-packages")
    os.mkdir(shared)
    ours = re.compile(r"^(__editable__\.)?dcnv2[_-]mx", re.I)
    for entry in os.listdir(sysconfig.get_paths()["purelib"]):
        if not ours.match(entry) and not entry.endswith(".pth"):
            os.symlink(os.path.join(sysconfig.get_paths()["purelib"], entry),
                       os.path.join(shared, entry))
    with open(os.path.join(site, "test_environment.pth"), "w") as pth:
        pth.write(f"{shared}\n")
    os.symlink(os.path.dirname(scipy_openblas32.__file__), os.path.join(site, "scipy_openblas32"))
    onednn = importlib.metadata.distribution("onednn-cpu-gomp")
    for library in (f for f in onednn.files if f.name == "libdnnl.so.3"):
        os.symlink(os.path.realpath(onednn.locate_file(library)), path / "lib" / "libdnnl.so.3")
    return python


@pytest.fixture(scope="module")
def installed_wheel(tree, venv):
    """Path of the library installed from a wheel that `pip wheel .` built in `tree`."""
    run(PIP + ["--python", venv, "wheel", "-q", "--no-deps", "-w", str(tree / "dist"),
               str(tree)])
    wheels = sorted((tree / "dist").glob("dcnv2_mx-*.whl"))
    assert len(wheels) == 1, wheels
    run(PIP + ["--python", venv, "install", "-q", "--no-deps", str(wheels[0])])
    return run([venv, "-c", _FORWARD], cwd="/").strip().splitlines()[-1]


def test_wheel_installs_and_runs_in_a_fresh_environment(installed_wheel, venv):
    assert installed_wheel.startswith(os.path.dirname(os.path.dirname(venv)))
    # Found without help: no LD_LIBRARY_PATH, no preload by dcnv2_mx/library.py.
    ldd = run(["ldd", installed_wheel])
    assert "not found" not in ldd, ldd
    for dependency in ("libscipy_openblas", "libdnnl.so.3"):
        line = next(line for line in ldd.splitlines() if dependency in line)
        assert os.path.dirname(os.path.dirname(venv)) in line, line


def test_wheel_names_no_folder_of_the_building_machine(installed_wheel):
    dynamic = run(["readelf", "-d", installed_wheel])
    runpaths = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic)
    assert runpaths, dynamic
    entries = [entry for runpath in runpaths for entry in runpath.split(":")]
    assert entries and all(entry.startswith("$ORIGIN") for entry in entries), entries


def test_install_again_after_an_edit_in_the_same_tree(installed_wheel, tree, venv):
    source = tree / "src" / "operator" / "contrib" / "library.cc"
    source.write_text(source.read_text() + "\n")
    run(PIP + ["--python", venv, "install", "-q", "--no-deps", str(tree)])
    assert run([venv, "-c", _FORWARD], cwd="/").strip().splitlines()[-1] == installed_wheel
