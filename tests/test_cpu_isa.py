"""The portable build: the library targets x86-64-v2 and carries its CPU kernels built for
x86-64-v2, -v3 (AVX2, FMA) and -v4 (AVX-512), running the widest this CPU supports
(src/operator/contrib/cpu/isa_dispatch.h). Checked here: no AVX instruction outside the wider
kernel builds (so a CPU without AVX runs the library), the choice made on this machine, and that
every build this CPU can run computes the same results."""
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dcnv2_mx

ISA = dcnv2_mx.library.cpu_kernels()
PORTABLE = ISA.startswith("x86-64-")
needs_portable = pytest.mark.skipif(
    not PORTABLE, reason=f"the loaded library is not the portable x86-64 build ({ISA})")

#: The namespaces of the kernel builds for wider instruction sets (isa_dispatch.h).
WIDE_BUILDS = ("isa_x86_64_v3", "isa_x86_64_v4")


def cpu_flags():
    with open("/proc/cpuinfo") as cpuinfo:
        line = next(line for line in cpuinfo if line.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def supported_levels():
    """The x86-64 levels whose kernel builds this CPU runs, narrowest first."""
    flags = cpu_flags()
    levels = ["x86-64-v2"]
    if {"avx2", "fma", "bmi1", "bmi2", "f16c"} <= flags:
        levels.append("x86-64-v3")
        if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
            levels.append("x86-64-v4")
    return levels


def functions_using_avx(path):
    """{function: number of AVX/AVX-512 instructions} of a shared library, from objdump -d."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", path],
                             capture_output=True, text=True, check=True).stdout
    counts, function, owner = {}, None, None
    for line in listing.splitlines():
        label = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if label:
            # clang names the functions it makes of OpenMP regions without the function (and so
            # the build) they come from: .omp_outlined..15 is in every build. The linker keeps
            # each object file's code together, so such a function is keyed under the named
            # function before it, which is of its build.
            if label.group(1).startswith(".") and owner:
                function = f"{owner} / {label.group(1)}"
            else:
                function = owner = label.group(1)
            continue
        instruction = line.split("\t")[-1].split()
        if function is None or len(line.split("\t")) < 2 or not instruction:
            continue
        # VEX/EVEX-encoded instructions (all AVX ones) start with v; legacy verr/verw are not AVX.
        mnemonic = instruction[0]
        if (mnemonic.startswith("v") and mnemonic not in ("verr", "verw")) or re.search(
                r"%[yz]mm|%k[0-7]\b", line):
            counts[function] = counts.get(function, 0) + 1
    return counts


@needs_portable
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_no_avx_outside_the_wider_kernel_builds():
    counts = functions_using_avx(dcnv2_mx.library.loaded_path())
    outside = {f: n for f, n in counts.items() if not any(b in f for b in WIDE_BUILDS)}
    assert not outside, f"AVX instructions in baseline code: {sorted(outside.items())[:20]}"
    # The wider builds exist and are vectorised (else the check above proves nothing).
    for build in WIDE_BUILDS:
        assert sum(n for f, n in counts.items() if build in f) > 100, build


@needs_portable
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_the_widest_supported_build_runs_and_info_names_it():
    widest = supported_levels()[-1]
    assert ISA.startswith(widest), (ISA, widest)
    proc = subprocess.run([sys.executable, "-m", "dcnv2_mx", "info"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^CPU ISA\s+{re.escape(ISA)}$", proc.stdout, re.M), proc.stdout


_RUN_OPS = textwrap.dedent("""
    import pickle, sys
    import mxnet as mx
    import numpy as np
    import dcnv2_mx

    rng = np.random.RandomState(3)
    results = {"isa": dcnv2_mx.library.cpu_kernels()}

    def run(op, inputs, params, dtype):
        arrays = [mx.nd.array(x, dtype=dtype) for x in inputs]
        for a in arrays:
            a.attach_grad()
        with mx.autograd.record():
            out = op(*arrays, **params)
        out.backward(mx.nd.array(rng_head.uniform(-1, 1, out.shape), dtype=dtype))
        return [out.asnumpy()] + [a.grad.asnumpy() for a in arrays]

    # 20 channels in 2 groups and 2 deformable groups: the vector loops and their remainders.
    N, C, H, W, F = 2, 20, 7, 6, 8
    conv_inputs = [rng.uniform(-1, 1, (N, C, H, W)), rng.uniform(-2, 2, (N, 36, H, W)),
                   rng.uniform(0, 1, (N, 18, H, W)), rng.uniform(-1, 1, (F, C // 2, 3, 3)),
                   rng.uniform(-1, 1, (F,))]
    conv_params = dict(kernel=(3, 3), pad=(1, 1), num_filter=F, num_group=2,
                       num_deformable_group=2)
    rois = np.array([[0, 1, 1, 5, 6], [1, 0, 2, 4, 5], [1, 2, 0, 6, 4]], dtype=np.float64)
    pool_inputs = [rng.uniform(-1, 1, (N, 2 * 9, 8, 9)), rois, rng.uniform(-1, 1, (3, 2, 3, 3)),
                   rng.uniform(0, 1, (3, 1, 3, 3))]
    pool_params = dict(spatial_scale=1.0, output_dim=2, group_size=3, pooled_size=3,
                       sample_per_part=2, trans_std=0.2)
    for dtype in ("float32", "float64"):
        rng_head = np.random.RandomState(5)
        results["conv", dtype] = run(mx.nd.contrib.DeformableConvolutionV2, conv_inputs,
                                     conv_params, dtype)
        results["pool", dtype] = run(mx.nd.contrib.ModulatedDeformablePSROIPooling, pool_inputs,
                                     pool_params, dtype)
    sys.stdout.buffer.write(pickle.dumps(results))
""")


def run_ops(isa):
    """Forward and backward results of both operators in a process with DCNV2_MX_CPU_ISA=isa."""
    env = dict(os.environ, DCNV2_MX_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-c", _RUN_OPS], capture_output=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return pickle.loads(proc.stdout)


@needs_portable
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_every_supported_build_computes_the_same_results():
    levels = supported_levels()
    results = {isa: run_ops(isa) for isa in levels}
    widest = results[levels[-1]]
    for isa in levels:
        assert results[isa]["isa"].startswith(isa)
        for key in (k for k in widest if k != "isa"):
            # Builds differ only in rounding: fused multiply-adds, vector sum orders.
            tol = dict(rtol=1e-4, atol=1e-5) if key[1] == "float32" else dict(rtol=1e-12,
                                                                              atol=1e-12)
            for got, want in zip(results[isa][key], widest[key]):
                np.testing.assert_allclose(got, want, **tol, err_msg=f"{isa} {key}")
            assert np.abs(widest[key][0]).max() > 0.1  # outputs are not all zero


@needs_portable
def test_an_unsupported_or_unknown_choice_is_a_clear_error():
    wanted = "x86-64-v4" if supported_levels()[-1] != "x86-64-v4" else "x86-64-v9"
    env = dict(os.environ, DCNV2_MX_CPU_ISA=wanted)
    proc = subprocess.run([sys.executable, "-c", "import dcnv2_mx"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert f"DCNV2_MX_CPU_ISA={wanted}" in proc.stderr, proc.stderr[-2000:]
