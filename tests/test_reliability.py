"""Hostile input to both operators: every tensor of a call is checked before a kernel reads it
(head gradients included), integer parameters are range-checked instead of wrapping at 32 bits,
derived sizes are computed without overflow, PS-RoI's sample_per_part is bounded, and an image
larger than MXNet's 2 GiB temporary allocation works. Each case that could crash runs in its own
process (conftest.run_python)."""
import os
import textwrap

import mxnet as mx
import pytest

from conftest import run_python

#: Imported before every snippet.
PRELUDE = "import mxnet as mx\nfrom mxnet import nd\nimport numpy as np\nimport dcnv2_mx\n"

#: What the wrapper prints when the snippet raised MXNetError, before the message.
_ERROR_MARK = "<<MXNetError>>"


def run_snippet(code, timeout=120):
    """Runs `code` (with `mx`, `nd`, `np` and `dcnv2_mx` imported) in a fresh Python process and
    returns the CompletedProcess. An MXNetError the snippet raises is caught and printed after a
    mark; the process then exits 0. Raises subprocess.TimeoutExpired after `timeout` seconds."""
    wrapped = (PRELUDE + "try:\n" + textwrap.indent(textwrap.dedent(code), "    ") +
               "\nexcept mx.MXNetError as error:\n"
               f"    print({_ERROR_MARK!r} + str(error), flush=True)\n")
    return run_python(wrapped, timeout=timeout)


def assert_clean_mxnet_error(code, *words, timeout=120):
    """Asserts that `code`, run by :func:`run_snippet`, raises an MXNetError whose message holds
    every one of `words` (plain substrings), and that the process exits normally afterwards (no
    signal, no hang, no other exception). Returns the error message."""
    proc = run_snippet(code, timeout)
    detail = f"exit status {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n" \
             f"stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, "the process died or failed: " + detail
    assert _ERROR_MARK in proc.stdout, "no MXNetError was raised: " + detail
    message = proc.stdout.split(_ERROR_MARK, 1)[1]
    for word in words:
        assert word in message, f"{word!r} is not in the error message:\n{message}"
    return message

#: Autograd through DCNv2 (`out` is (2, 3, 6, 6)) and through PS-RoI pooling (`out` is
#: (3, 2, 3, 3)); a snippet appends its backward() call.
CONV_V2 = """
d, o, m = nd.ones((2, 4, 6, 6)), nd.zeros((2, 18, 6, 6)), nd.ones((2, 9, 6, 6))
w, b = nd.ones((3, 4, 3, 3)), nd.zeros(3)
for x in (d, o, m, w, b):
    x.attach_grad()
with mx.autograd.record():
    out = mx.nd.contrib.DeformableConvolutionV2(d, o, m, w, b, kernel=(3, 3), pad=(1, 1),
                                                num_filter=3)
"""
CONV_V1 = """
d, o, w = nd.ones((2, 4, 6, 6)), nd.zeros((2, 18, 6, 6)), nd.ones((3, 4, 3, 3))
for x in (d, o, w):
    x.attach_grad()
with mx.autograd.record():
    out = mx.nd.contrib.DeformableConvolutionV1(data=d, offset=o, weight=w, kernel=(3, 3),
                                                pad=(1, 1), num_filter=3, no_bias=True)
"""
PSROI = """
d = nd.ones((2, 18, 8, 8))
rois = nd.array([[0, 1, 1, 10, 10], [1, 0, 0, 15, 15], [0, 2, 3, 6, 7]])
t, m = nd.zeros((3, 2, 3, 3)), nd.ones((3, 1, 3, 3))
for x in (d, t, m):
    x.attach_grad()
with mx.autograd.record():
    out = mx.nd.contrib.ModulatedDeformablePSROIPooling(
        d, rois, t, m, spatial_scale=0.5, output_dim=2, group_size=3, pooled_size=3,
        part_size=3, sample_per_part=2, trans_std=0.1)
"""
FORWARDS = {"v2": (CONV_V2, "(2, 3, 6, 6)"), "v1": (CONV_V1, "(2, 3, 6, 6)"),
            "psroi": (PSROI, "(3, 2, 3, 3)")}


#: Head gradients that do not fit an output of shape (2, 3, 6, 6) or (3, 2, 3, 3).
WRONG_HEADS = ["(1,)", "(2, 3, 5, 5)", "(3, 2, 3, 2)", "(600000,)"]


@pytest.mark.parametrize("op", sorted(FORWARDS))
def test_head_gradient_of_the_wrong_shape_or_dtype_is_a_clear_error(op):
    """Autograd hands a library operator's backward whatever array backward() got: a smaller one
    was read past its end (a segmentation fault, heap corruption), one of the right size but
    another shape gave garbage gradients. Every wrong head gradient, then the right one, in one
    process (a process costs seconds): each wrong one must fail cleanly and leave the operator
    usable."""
    forward, out_shape = FORWARDS[op]
    heads = [f"nd.ones({shape})" for shape in WRONG_HEADS if shape != out_shape]
    heads.append(f"nd.ones({out_shape}, dtype='float64')")
    message = assert_clean_mxnet_error(
        forward + "messages = []\n"
        f"for head in [{', '.join(heads)}]:\n"
        "    try:\n"
        "        out.backward(head, retain_graph=True)\n"
        "        d.grad.wait_to_read()\n"
        "        messages.append('no error for ' + str(head.shape))\n"
        "    except mx.MXNetError as error:\n"
        "        messages.append(str(error))\n"
        f"out.backward(nd.ones({out_shape}))\n"
        "assert np.isfinite(d.grad.asnumpy()).all()\n"
        "raise mx.MXNetError('\\n'.join(messages + ['right head gradient: finished']))\n",
        "right head gradient: finished",
        "the output gradient (head gradient) is float64 but input 'data' is float32",
        *(f"the output gradient (head gradient) has shape {shape} but the output is {out_shape}"
          for shape in WRONG_HEADS if shape != out_shape))
    assert "no error" not in message


# ------------------------------------------------------------------------------------------
# Integer parameters and derived sizes


def _conv(**params):
    """DCNv1 (no bias) on a (1, 4, 6, 6) image of ones with `params` over kernel 3x3, 3 filters."""
    kwargs = dict(kernel=(3, 3), num_filter=3, no_bias=True)
    kwargs.update(params)
    return mx.nd.contrib.DeformableConvolutionV1(
        data=mx.nd.ones((1, 4, 6, 6)), offset=mx.nd.zeros((1, 18, 4, 4)),
        weight=mx.nd.ones((3, 4, 3, 3)), **kwargs).asnumpy()


@pytest.mark.parametrize("params, message", [
    (dict(kernel=(2 ** 32 + 3, 3)), "parameter 'kernel' must be <= 2147483647, got 4294967299"),
    (dict(kernel=(3, -2 ** 32 + 3)), "parameter 'kernel' must be >= 1, got -4294967293"),
    (dict(num_filter=2 ** 32 + 3), "parameter 'num_filter' must be <= 2147483647"),
    (dict(num_filter=2 ** 70), "parameter 'num_filter' must be <= 2147483647"),
    (dict(stride=2 ** 32 + 1), "parameter 'stride' must be <= 2147483647"),
    (dict(dilate=(1, 2 ** 31)), "parameter 'dilate' must be <= 2147483647"),
    (dict(pad=(2 ** 32, 0)), "parameter 'pad' must be <= 2147483647"),
    (dict(num_group=2 ** 32 + 1), "parameter 'num_group' must be <= 2147483647"),
    (dict(num_deformable_group=2 ** 32 + 1),
     "parameter 'num_deformable_group' must be <= 2147483647"),
    (dict(workspace=2 ** 32 + 1024), "parameter 'workspace' must be <= 2147483647 (MiB)"),
    (dict(im2col_step=2 ** 32 + 64), "parameter 'im2col_step' must be <= 2147483647"),
    # 2 * pad overflowed 32 bits: a (1, 3, 2, 4) output of bias values, or a wrong message.
    (dict(pad=(2 ** 31 - 1, 0)), "the output planes would be Ho x Wo = 4294967298 x 4 pixels"),
    (dict(pad=2 ** 31 - 2), "the output planes would be Ho x Wo = 4294967296 x 4294967296"),
])
def test_out_of_range_integer_parameters_are_refused(params, message):
    """Parameters were read as 64-bit integers and cast to int: kernel=(2**32+3, 3) computed a
    3x3 convolution, num_filter=2**32+3 ran with 3 filters."""
    with pytest.raises(mx.MXNetError) as error:
        _conv(**params)
    assert message in str(error.value)


@pytest.mark.parametrize("params, data, message", [
    # 2*num_deformable_group*kh*kw offset channels would not fit shape inference's 32 bits.
    (dict(kernel=(40000, 40000), num_filter=1), (1, 1, 40000, 40000),
     "input 'offset' would have 2*num_deformable_group*kh*kw = 2*1*40000*40000 channels"),
    (dict(kernel=(40000, 40000), num_filter=1), (1, 2, 40000, 40000),
     "C*kh*kw = 2*40000*40000 is more than the 2^31-1 supported"),
    (dict(kernel=(1, 1), num_filter=1), (1, 1, 50000, 50000),
     "input 'data' planes of more than 2^31-1 pixels are not supported"),
])
def test_derived_sizes_are_checked_without_overflow(params, data, message):
    """Shape inference alone (nothing is allocated): sizes derived from large parameters."""
    sym = mx.sym.contrib.DeformableConvolutionV1(data=mx.sym.var("data"),
                                                 offset=mx.sym.var("offset"), **params)
    with pytest.raises(mx.MXNetError) as error:
        sym.infer_shape(data=data)
    assert message in str(error.value)


def _psroi(**params):
    """PS-RoI pooling without offsets on a (1, 18, 8, 8) map with `params` over the defaults."""
    kwargs = dict(spatial_scale=0.5, output_dim=2, group_size=3, pooled_size=3, no_trans=True)
    kwargs.update(params)
    return mx.nd.contrib.ModulatedDeformablePSROIPooling(
        data=mx.nd.ones((1, 18, 8, 8)), rois=mx.nd.array([[0, 0, 0, 9, 9]]), **kwargs).asnumpy()


@pytest.mark.parametrize("params, message", [
    (dict(output_dim=2 ** 32 + 2), "parameter 'output_dim' must be <= 2147483647"),
    (dict(group_size=2 ** 32 + 3), "parameter 'group_size' must be <= 2147483647"),
    (dict(pooled_size=2 ** 32 + 3), "parameter 'pooled_size' must be <= 2147483647"),
    (dict(part_size=2 ** 32 + 3), "parameter 'part_size' must be <= 2147483647"),
    (dict(sample_per_part=2 ** 32 + 1), "parameter 'sample_per_part' must be <= 64"),
    # output_dim * group_size^2 overflowed 64 bits before it was compared with the channels.
    (dict(output_dim=2 ** 31 - 1, group_size=2 ** 31 - 1),
     "input 'data' has 18 channels but output_dim*group_size^2 = 2147483647*2147483647^2 were "
     "expected"),
])
def test_psroi_out_of_range_integer_parameters_are_refused(params, message):
    with pytest.raises(mx.MXNetError) as error:
        _psroi(**params)
    assert message in str(error.value)


def test_sample_per_part_is_bounded():
    """A bin averages S x S samples: S = 50,000 never returned and could not be interrupted.
    The bound, 64, is documented in the README."""
    assert _psroi(sample_per_part=64).shape == (1, 2, 3, 3)
    with pytest.raises(mx.MXNetError, match=r"'sample_per_part' must be <= 64 \(a bin averages "
                                            r"S x S samples; see the README\), got 65"):
        _psroi(sample_per_part=65)


def test_huge_sample_per_part_fails_at_once_in_a_fresh_process():
    assert_clean_mxnet_error(
        "out = mx.nd.contrib.ModulatedDeformablePSROIPooling(nd.ones((1, 18, 8, 8)), "
        "nd.array([[0, 0, 0, 9, 9]]), spatial_scale=0.5, output_dim=2, group_size=3, "
        "pooled_size=3, no_trans=True, sample_per_part=50000)\nout.wait_to_read()\n",
        "'sample_per_part' must be <= 64", timeout=60)


def _physical_memory_gib():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30


@pytest.mark.skipif(_physical_memory_gib() < 12, reason="needs about 5 GiB of memory")
def test_an_image_larger_than_2_gib_runs_with_its_scratch_beyond_mxnets_allocation():
    """A 128x2100x2100 float32 image (2.26 GB): its pixel-major copy, within workspace=2300
    (MiB), is more than OpResource::alloc_cpu's int can ask for, so the operator allocates the
    block itself. This failed at any workspace ("'workspace' (4096 MiB) is too small: this input
    needs 2257921219 bytes"). A 1x1 kernel keeps it to seconds (about 20 s on 2 busy cores)."""
    proc = run_snippet("""
d = nd.ones((1, 128, 2100, 2100))
y = mx.nd.contrib.DeformableConvolutionV1(
    data=d, offset=nd.zeros((1, 2, 2100, 2100)), weight=nd.ones((1, 128, 1, 1)), no_bias=True,
    kernel=(1, 1), num_filter=1, workspace=2300)
corners = y[0, 0, ::2099, ::2099].asnumpy()
print('corners', corners.min(), corners.max())
""", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "corners 128.0 128.0" in proc.stdout, proc.stdout[-3000:]
