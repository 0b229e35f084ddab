"""Empty inputs: under numpy shape semantics (``mx.util.set_np_shape(True)``) a 0 is a real
size, and both operators follow MXNet's built-ins — an empty batch or no RoIs give an empty
output and zero gradients. Under the legacy semantics (the default) MXNet reads a 0 as
"unknown", so the same shapes are refused as before."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

import dcnv2_mx  # noqa: F401

CONV_OPS = ["DeformableConvolutionV2", "DeformableConvolutionV1"]
PSROI = dict(spatial_scale=0.5, output_dim=2, group_size=2, pooled_size=3, part_size=2,
             trans_std=0.1)


@pytest.fixture
def np_shape():
    with mx.util.np_shape(True):
        yield


def _conv_arrays(op, batch, channels=4, size=5):
    """Inputs of a 3x3 convolution with pad 1, 3 filters, 2 deformable groups (random values,
    so that a gradient left unwritten cannot pass for zero)."""
    rng = np.random.RandomState(0)
    shapes = dict(data=(batch, channels, size, size), offset=(batch, 36, size, size),
                  mask=(batch, 18, size, size), weight=(3, channels, 3, 3), bias=(3,))
    if op == "DeformableConvolutionV1":
        del shapes["mask"]
    return {k: mx.nd.array(rng.uniform(-1, 1, s)) for k, s in shapes.items()}


def _conv(op, arrays):
    return getattr(mx.nd.contrib, op)(**arrays, kernel=(3, 3), pad=(1, 1), num_filter=3,
                                      num_deformable_group=2)


@pytest.mark.parametrize("op", CONV_OPS)
def test_conv_empty_batch_gives_empty_output_and_zero_gradients(np_shape, op):
    arrays = _conv_arrays(op, batch=0)
    for a in arrays.values():
        a.attach_grad()
        a.grad[:] = 7  # the backward must overwrite the weight's and the bias's
    with mx.autograd.record():
        out = _conv(op, arrays)
    assert out.shape == (0, 3, 5, 5)
    out.backward(mx.nd.zeros((0, 3, 5, 5)))
    for k, a in arrays.items():
        grad = a.grad.asnumpy()
        assert grad.shape == a.shape, k
        np.testing.assert_array_equal(grad, 0, err_msg=k)


@pytest.mark.parametrize("op", CONV_OPS)
def test_conv_empty_batch_symbol(np_shape, op):
    inputs = {k: mx.sym.var(k) for k in ("data", "offset", "mask")}
    if op == "DeformableConvolutionV1":
        del inputs["mask"]
    sym = getattr(mx.sym.contrib, op)(**inputs, kernel=(3, 3), num_filter=3, name="dcn")
    args, outs, _ = sym.infer_shape(data=(0, 4, 5, 5))
    assert outs == [(0, 3, 3, 3)]
    assert dict(zip(sym.list_arguments(), args))["offset"] == (0, 18, 3, 3)
    # Variables without a shape stay unknown under numpy shapes (not "known to be empty").
    args, _, _ = sym.infer_shape(data=(2, 4, 5, 5))
    assert dict(zip(sym.list_arguments(), args))["dcn_weight"] == (3, 4, 3, 3)


@pytest.mark.parametrize("shape", [(2, 0, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)])
def test_conv_without_channels_or_pixels_is_refused(np_shape, shape):
    n, c, h, w = shape
    with pytest.raises(MXNetError, match="channels, height and width must be >= 1"):
        mx.nd.contrib.DeformableConvolutionV2(
            mx.nd.ones(shape), mx.nd.ones((n, 18, h, w)), mx.nd.ones((n, 9, h, w)),
            mx.nd.ones((3, c, 1, 1)), mx.nd.ones((3,)), kernel=(3, 3), pad=(1, 1),
            num_filter=3).wait_to_read()


def _psroi_arrays(batch, num_rois):
    rng = np.random.RandomState(1)
    rois = np.zeros((num_rois, 5))
    rois[:, 3:] = 6
    return dict(data=mx.nd.array(rng.uniform(-1, 1, (batch, 8, 6, 7))), rois=mx.nd.array(rois),
                trans=mx.nd.array(rng.normal(0, 1, (num_rois, 2, 2, 2))),
                mask=mx.nd.array(rng.uniform(0, 1, (num_rois, 1, 2, 2))))


@pytest.mark.parametrize("batch", [0, 2])
def test_psroi_no_rois_gives_empty_output_and_zero_gradients(np_shape, batch):
    arrays = _psroi_arrays(batch, num_rois=0)
    for a in arrays.values():
        a.attach_grad()
        a.grad[:] = 7  # the backward must overwrite the data gradient
    with mx.autograd.record():
        out = mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **PSROI)
    assert out.shape == (0, 2, 3, 3)
    out.backward(mx.nd.zeros((0, 2, 3, 3)))
    for k, a in arrays.items():
        grad = a.grad.asnumpy()
        assert grad.shape == a.shape, k
        np.testing.assert_array_equal(grad, 0, err_msg=k)


def test_psroi_no_rois_symbol(np_shape):
    sym = mx.sym.contrib.ModulatedDeformablePSROIPooling(
        mx.sym.var("data"), mx.sym.var("rois"), mx.sym.var("trans"), **PSROI)
    args, outs, _ = sym.infer_shape(data=(1, 8, 6, 7), rois=(0, 5), trans=(0, 2, 2, 2))
    assert outs == [(0, 2, 3, 3)]


def test_psroi_rois_into_an_empty_batch_are_refused(np_shape):
    with pytest.raises(MXNetError, match=r"must be in \(-1, 0\)"):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(**_psroi_arrays(0, num_rois=2),
                                                      **PSROI).wait_to_read()


@pytest.mark.parametrize("shape,match", [
    ((1, 8, 0, 7), "height and width must be >= 1"),
    ((1, 0, 6, 7), "channels but output_dim"),
])
def test_psroi_empty_planes_or_channels_are_refused(np_shape, shape, match):
    arrays = _psroi_arrays(1, num_rois=2)
    arrays["data"] = mx.nd.ones(shape)
    with pytest.raises(MXNetError, match=match):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **PSROI).wait_to_read()


def test_psroi_trans_without_classes_is_refused(np_shape):
    arrays = _psroi_arrays(1, num_rois=2)
    arrays["trans"] = mx.nd.ones((2, 0, 2, 2))
    del arrays["mask"]
    with pytest.raises(MXNetError, match="has no classes"):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **PSROI).wait_to_read()


def test_legacy_shapes_read_zero_as_unknown():
    assert not mx.util.is_np_shape()
    conv = mx.sym.contrib.DeformableConvolutionV2(
        mx.sym.var("data"), mx.sym.var("offset"), mx.sym.var("mask"), kernel=(3, 3),
        num_filter=3)
    with pytest.raises(MXNetError, match="shape of input 'data' must be known"):
        conv.infer_shape(data=(0, 4, 5, 5))
    psroi = mx.sym.contrib.ModulatedDeformablePSROIPooling(
        mx.sym.var("data"), mx.sym.var("rois"), mx.sym.var("trans"), **PSROI)
    with pytest.raises(MXNetError, match="the number of RoIs is unknown"):
        psroi.infer_shape(data=(1, 8, 6, 7), rois=(0, 5), trans=(0, 2, 2, 2))
