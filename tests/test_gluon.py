"""Tests of the Gluon blocks: DeformableConvolutionV2/V1 (parity and parameter files of MXNet's
blocks, Conv2D conversion, mask activations, learning-rate multiplier, deferred shapes, any
batch size, hybridize/export/import) and ModulatedDeformableRoIPooling (against MXNet's
DeformablePSROIPooling, initial state, gradients, export/import)."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon.contrib.cnn import DeformableConvolution, ModulatedDeformableConvolution

from dcnv2_mx.gluon import (DeformableConvolutionV1, DeformableConvolutionV2,
                            ModulatedDeformableRoIPooling, dense_offset_weight,
                            replace_mxnet_deformable_convolutions)


def nd(rng, *shape, low=-1.0, high=1.0):
    return mx.nd.array(rng.uniform(low, high, shape))


def randomise(block, rng, pattern=".*", scale=0.3):
    """Gives the selected (initialised) parameters random values, so offsets are non-zero."""
    for param in block.collect_params(pattern).values():
        param.set_data(nd(rng, *param.shape, low=-scale, high=scale))


def grads(block):
    return {name: p.grad().asnumpy().copy() for name, p in block.collect_params().items()
            if p.grad_req != "null"}


# ---------------------------------------------------------------------------------------------
# DeformableConvolutionV2 / V1


@pytest.mark.parametrize("groups", [1, 3])
def test_v2_loads_mxnet_block_file_and_matches(rng, tmp_path, groups):
    """A parameter file written by MXNet's block loads into ours (groups > 1: after
    dense_offset_weight) and both compute the same output, with random offsets and masks."""
    mxnet_block = ModulatedDeformableConvolution(6, 3, padding=1, groups=groups,
                                                 num_deformable_group=1)
    mxnet_block.initialize()
    x = nd(rng, 2, 6, 7, 6)
    mxnet_block(x)
    randomise(mxnet_block, rng, ".*offset.*")
    expected = mxnet_block(x).asnumpy()
    path = str(tmp_path / "mxnet.params")
    mxnet_block.save_parameters(path)
    if groups > 1:
        saved = mx.nd.load(path)
        saved["offset_weight"] = dense_offset_weight(saved["offset_weight"], groups)
        mx.nd.save(path, saved)

    ours = DeformableConvolutionV2(6, 3, padding=1, groups=groups)
    ours.load_parameters(path)
    np.testing.assert_allclose(ours(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 3])
def test_replace_mxnet_blocks_in_a_model(rng, groups):
    """replace_mxnet_deformable_convolutions swaps MXNet's blocks in place, keeps their
    Parameters and output, and the model then trains on CPU."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 1),
            ModulatedDeformableConvolution(6, 3, strides=2, padding=1, groups=groups,
                                           activation="relu"))
    net.initialize()
    x = nd(rng, 3, 2, 8, 8)
    net(x)
    randomise(net, rng, ".*offset.*")
    expected = net(x).asnumpy()
    names = set(net.collect_params())

    assert replace_mxnet_deformable_convolutions(net) == 1
    assert isinstance(net[1], DeformableConvolutionV2)
    assert set(net.collect_params()) == names
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    assert np.abs(net[1].offset_weight.grad().asnumpy()).max() > 0


def test_v1_parameter_names_match_mxnet_block(rng, tmp_path):
    """DeformableConvolutionV1 loads MXNet's DeformableConvolution file; with the initial zero
    offsets (samples on the grid, where both border rules agree) the outputs are equal."""
    mxnet_block = DeformableConvolution(4, 3, padding=1)
    mxnet_block.initialize()
    x = nd(rng, 2, 3, 6, 6)
    expected = mxnet_block(x).asnumpy()
    path = str(tmp_path / "v1.params")
    mxnet_block.save_parameters(path)
    ours = DeformableConvolutionV1(4, 3, padding=1)
    ours.load_parameters(path)
    np.testing.assert_allclose(ours(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_cls", [DeformableConvolutionV2, DeformableConvolutionV1])
@pytest.mark.parametrize("geometry", [
    dict(channels=4, kernel_size=3, padding=1, use_bias=False),
    dict(channels=6, kernel_size=(3, 2), strides=(2, 1), padding=(2, 0), dilation=(2, 1),
         groups=2, activation="relu"),
])
def test_from_conv2d_keeps_names_and_output(rng, block_cls, geometry):
    """A converted Conv2D shares its Parameters and names and, with zero offsets (and the
    default 2*sigmoid mask), computes exactly the Conv2D."""
    conv = gluon.nn.Conv2D(**geometry)
    conv.initialize()
    x = nd(rng, 2, 4, 7, 6)
    expected = conv(x).asnumpy()
    dcn = block_cls.from_conv2d(conv)
    dcn.collect_params(".*offset.*").initialize()
    assert dcn.prefix == conv.prefix and dcn.weight is conv.weight
    assert set(dcn.collect_params()) == set(conv.collect_params()) | {
        conv.prefix + "offset_weight", conv.prefix + "offset_bias"}
    np.testing.assert_allclose(dcn(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_mask_activation(rng):
    """'2sigmoid' starts at mask 1 (the plain convolution), 'sigmoid' at 0.5 (half of it)."""
    x = nd(rng, 1, 3, 5, 5)
    outputs = {}
    for activation in ("2sigmoid", "sigmoid"):
        block = DeformableConvolutionV2(4, 3, padding=1, use_bias=False,
                                        mask_activation=activation,
                                        weight_initializer=mx.init.Constant(0.1))
        block.initialize()
        outputs[activation] = block(x).asnumpy()
    np.testing.assert_allclose(outputs["sigmoid"], 0.5 * outputs["2sigmoid"], rtol=1e-6)
    assert np.abs(outputs["sigmoid"]).max() > 0
    with pytest.raises(ValueError, match="mask_activation"):
        DeformableConvolutionV2(4, 3, mask_activation="tanh")
    with pytest.raises(ValueError, match="layout"):
        DeformableConvolutionV2(4, 3, layout="NHWC")


def test_offset_lr_mult(rng):
    """One SGD step moves the offset branch by offset_lr_mult times the base rate."""
    block = DeformableConvolutionV2(4, 3, padding=1, offset_lr_mult=0.1)
    block.initialize()
    x = nd(rng, 2, 3, 6, 6)
    block(x)
    randomise(block, rng, ".*offset.*")
    before = {k: p.data().asnumpy().copy() for k, p in block.collect_params().items()}
    trainer = gluon.Trainer(block.collect_params(), "sgd", {"learning_rate": 1.0, "wd": 0})
    with autograd.record():
        loss = (block(x) ** 2).sum()
    loss.backward()
    gradients = grads(block)
    trainer.step(1)
    for name, param in block.collect_params().items():
        lr = 0.1 if "offset" in name else 1.0
        assert np.abs(gradients[name]).max() > 0, name
        np.testing.assert_allclose(param.data().asnumpy(), before[name] - lr * gradients[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("block_cls", [DeformableConvolutionV2, DeformableConvolutionV1])
def test_deferred_in_channels_and_any_batch(rng, block_cls):
    """in_channels is inferred at the first forward (also with groups), and a batch of 72
    (MXNet's operator needs batch <= 64 or a multiple of it) trains, equal to per-sample runs."""
    block = block_cls(4, 3, padding=1, groups=2, num_deformable_group=2)
    block.initialize()
    x = nd(rng, 72, 6, 3, 3)
    block(x[:1])
    assert block.deformable_conv_weight.shape == (4, 3, 3, 3)
    per_tap = 3 if block_cls is DeformableConvolutionV2 else 2  # (dy, dx[, mask logit])
    assert block.offset_weight.shape == (per_tap * 2 * 9, 6, 3, 3)
    randomise(block, rng, ".*offset.*")
    with autograd.record():
        out = block(x)
    out.backward()
    single = np.concatenate([block(x[i:i + 1]).asnumpy() for i in (0, 40, 71)])
    np.testing.assert_allclose(out.asnumpy()[[0, 40, 71]], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("static_alloc", [False, True])
def test_hybridized_equals_imperative(rng, static_alloc):
    """Outputs and all parameter gradients agree between imperative and hybridized runs."""
    net = gluon.nn.HybridSequential()
    net.add(DeformableConvolutionV2(4, 3, padding=1, activation="relu", use_bias=False),
            DeformableConvolutionV1(3, 3, strides=2, padding=1))
    net.initialize()
    x = nd(rng, 2, 3, 6, 6)
    net(x)
    randomise(net, rng, ".*offset.*")
    results = []
    for hybridize in (False, True):
        if hybridize:
            net.hybridize(static_alloc=static_alloc, static_shape=static_alloc)
        with autograd.record():
            out = net(x)
        out.backward()
        results.append((out.asnumpy(), grads(net)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        np.testing.assert_allclose(results[1][1][name], grad, rtol=1e-4, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("block_cls, kernel, dg, filters, computed", [
    (DeformableConvolutionV2, 3, 1, 27, 32), (DeformableConvolutionV2, 3, 2, 54, 56),
    (DeformableConvolutionV1, 3, 1, 18, 24), (DeformableConvolutionV2, 1, 2, 6, 8),
    (DeformableConvolutionV2, 1, 1, 3, 3), (DeformableConvolutionV1, 1, 4, 8, 8)])
def test_offset_convolution_filters_rounded_up(rng, block_cls, kernel, dg, filters, computed):
    """The offset convolution runs with its filters rounded up to a multiple of 8 by zero
    filters (none added where that would take more than it has), and the block computes the same
    output and gradients (grad_req 'add' too) as the offset convolution written directly."""
    block = block_cls(4, kernel, padding=kernel // 2, num_deformable_group=dg)
    block.initialize()
    x = nd(rng, 2, 4, 5, 6)
    block(x)
    randomise(block, rng)
    assert block.offset_weight.shape == (filters, 4, kernel, kernel)
    graph = block(mx.sym.var("data")).get_internals()
    offset_conv = [graph[name] for name in graph.list_outputs() if name.endswith("offset_output")]
    assert [int(s.attr("num_filter")) for s in offset_conv] == [computed]

    def direct(x, weight, bias, offset_weight, offset_bias):
        offset = mx.nd.Convolution(x, offset_weight, offset_bias, kernel=(kernel, kernel),
                                   pad=(kernel // 2,) * 2, num_filter=filters)
        geometry = dict(kernel=(kernel, kernel), pad=(kernel // 2,) * 2, num_filter=4,
                        num_deformable_group=dg)
        if block_cls is DeformableConvolutionV1:
            return mx.nd.contrib.DeformableConvolutionV1(x, offset, weight, bias, **geometry)
        mask = 2 * mx.nd.sigmoid(offset[:, 2 * dg * kernel ** 2:])
        return mx.nd.contrib.DeformableConvolutionV2(x, offset[:, :2 * dg * kernel ** 2], mask,
                                                     weight, bias, **geometry)

    params = [block.deformable_conv_weight, block.deformable_conv_bias, block.offset_weight,
              block.offset_bias]
    inputs = [x] + [p.data().copy() for p in params]
    for value in inputs:
        value.attach_grad()
    with autograd.record():
        expected = direct(*inputs)
    expected.backward(mx.nd.ones_like(expected))
    block.collect_params().setattr("grad_req", "add")
    block.hybridize()
    for _ in range(2):  # the second backward adds to the first
        with autograd.record():
            out = block(x)
        out.backward(mx.nd.ones_like(out))
    np.testing.assert_allclose(out.asnumpy(), expected.asnumpy(), rtol=1e-5, atol=1e-6)
    for param, value in zip(params, inputs[1:]):
        np.testing.assert_allclose(param.grad().asnumpy(), 2 * value.grad.asnumpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=param.name)


def test_dense_offset_weight(rng):
    """The dense weight computes the grouped convolution; bad groups are refused."""
    grouped = nd(rng, 6, 2, 3, 3)
    x = nd(rng, 1, 6, 5, 5)
    expected = mx.nd.Convolution(x, grouped, kernel=(3, 3), num_filter=6, num_group=3,
                                 no_bias=True)
    dense = dense_offset_weight(grouped, 3)
    assert dense.shape == (6, 6, 3, 3)
    got = mx.nd.Convolution(x, dense, kernel=(3, 3), num_filter=6, no_bias=True)
    np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="groups=4"):
        dense_offset_weight(grouped, 4)


# ---------------------------------------------------------------------------------------------
# ModulatedDeformableRoIPooling

ROIS = [[0, 3, 5, 40, 50], [1, 20, 12, 110, 90], [0, -10, 30, 60, 140], [1, 0, 0, 127, 127]]


def builtin_pool(data, rois, trans=None, pooled=4, **kwargs):
    """MXNet's DeformablePSROIPooling as the RoI head uses it (group_size 1, 2x2 samples)."""
    args = [data, rois] + ([trans] if trans is not None else [])
    return mx.nd.contrib.DeformablePSROIPooling(
        *args, spatial_scale=0.125, output_dim=data.shape[1], group_size=1, pooled_size=pooled,
        part_size=pooled, sample_per_part=2, trans_std=0.1, no_trans=trans is None, **kwargs)


@pytest.mark.parametrize("activation, initial_mask", [("sigmoid", 0.5), ("2sigmoid", 1.0)])
def test_roi_head_starts_as_plain_pooling(rng, activation, initial_mask):
    """With the zero-initialised last layer: no offsets, mask activation(0)."""
    data, rois = nd(rng, 2, 5, 16, 16), mx.nd.array(ROIS)
    head = ModulatedDeformableRoIPooling(5, pooled_size=4, spatial_scale=0.125,
                                         hidden_units=8, mask_activation=activation)
    head.initialize()
    expected = initial_mask * builtin_pool(data, rois).asnumpy()
    np.testing.assert_allclose(head(data, rois).asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_roi_head_matches_builtin_pooling_with_predicted_offsets(rng):
    """The head = mask * MXNet's deformable pooling with the FC's first 2*P*P outputs as
    (x, y) offsets and sigmoid of the last P*P as masks, per bin."""
    data, rois = nd(rng, 2, 5, 16, 16), mx.nd.array(ROIS)
    head = ModulatedDeformableRoIPooling(5, pooled_size=4, spatial_scale=0.125, hidden_units=8)
    head.initialize()
    head(data, rois)
    randomise(head, rng, scale=0.5)
    fused = head.offset_head(builtin_pool(data, rois)).asnumpy()
    trans = mx.nd.array(fused[:, :32].reshape(4, 2, 4, 4))
    mask = 1 / (1 + np.exp(-fused[:, 32:].reshape(4, 1, 4, 4)))
    assert np.abs(trans.asnumpy()).max() > 0.1
    expected = mask * builtin_pool(data, rois, trans).asnumpy()
    np.testing.assert_allclose(head(data, rois).asnumpy(), expected, rtol=1e-4, atol=1e-6)


def test_roi_head_part_size_and_gradients(rng):
    """part_size < pooled_size: the FCs see part x part bins; training reaches every layer and
    the feature map; hybridized gradients equal imperative ones."""
    data, rois = nd(rng, 2, 3, 16, 16), mx.nd.array(ROIS)
    head = ModulatedDeformableRoIPooling(3, pooled_size=4, part_size=2, spatial_scale=0.125,
                                         hidden_units=8)
    head.initialize()
    assert head(data, rois).shape == (4, 3, 4, 4)
    assert head.offset_head[0].weight.shape == (8, 3 * 2 * 2)
    assert head.offset_head[2].weight.shape == (3 * 2 * 2, 8)
    randomise(head, rng)  # the zero-initialised last layer would stop gradients to the others
    data.attach_grad()
    out_grad = nd(rng, 4, 3, 4, 4)
    results = []
    for hybridize in (False, True):
        if hybridize:
            head.hybridize(static_alloc=True)
        with autograd.record():
            out = head(data, rois)
        out.backward(out_grad)
        results.append((data.grad.asnumpy().copy(), grads(head)))
    assert np.abs(results[0][0]).max() > 0
    for name, grad in results[0][1].items():
        assert np.abs(grad).max() > 0, name
        np.testing.assert_allclose(results[1][1][name], grad, rtol=1e-4, atol=1e-7,
                                   err_msg=name)
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4, atol=1e-7)


def test_roi_head_non_square_sizes(rng):
    """pooled_size and part_size as (h, w): the output and the FCs follow; an int means a square."""
    data, rois = nd(rng, 2, 3, 16, 16), mx.nd.array(ROIS)
    head = ModulatedDeformableRoIPooling(3, pooled_size=(2, 4), part_size=(1, 3),
                                         spatial_scale=0.125, hidden_units=8)
    head.initialize()
    assert head(data, rois).shape == (4, 3, 2, 4)
    assert head.offset_head[2].weight.shape == (3 * 1 * 3, 8)
    assert "pooled_size=(2, 4), part_size=(1, 3)" in repr(head)
    randomise(head, rng)
    trans, mask = head.offsets_and_masks(mx.nd, head.pool_plain(mx.nd, data, rois, 0.125))
    assert trans.shape == (4, 2, 1, 3) and mask.shape == (4, 1, 1, 3)
    want = mx.nd.contrib.ModulatedDeformablePSROIPooling(
        data, rois, trans, mask, spatial_scale=0.125, output_dim=3, group_size=1,
        pooled_size=(2, 4), part_size=(1, 3), sample_per_part=2, trans_std=0.1)
    np.testing.assert_array_equal(head(data, rois).asnumpy(), want.asnumpy())
    head.hybridize()
    np.testing.assert_allclose(head(data, rois).asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-7)
    assert "pooled_size=4, part_size=4" in repr(ModulatedDeformableRoIPooling(3, pooled_size=4))


# ---------------------------------------------------------------------------------------------
# Export and import in a fresh process

_IMPORT_SCRIPT = """
import sys
import mxnet as mx
import numpy as np
import dcnv2_mx  # noqa: F401  (the exported graphs use its operators)
prefix, names = sys.argv[1], sys.argv[2:]
block = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", names, prefix + "-0000.params")
inputs = [mx.nd.array(np.load(prefix + "-" + name + ".npy")) for name in names]
np.save(prefix + "-out.npy", block(*inputs).asnumpy())
"""


@pytest.mark.parametrize("kind", ["v2", "v1", "roi"])
def test_export_and_import_in_fresh_process(rng, tmp_path, kind):
    """export() with static_alloc, then SymbolBlock.imports after `import dcnv2_mx`."""
    if kind == "roi":
        block = ModulatedDeformableRoIPooling(3, pooled_size=3, spatial_scale=0.125,
                                              hidden_units=8)
        inputs = {"data0": nd(rng, 2, 3, 16, 16), "data1": mx.nd.array(ROIS)}
    else:
        cls = DeformableConvolutionV2 if kind == "v2" else DeformableConvolutionV1
        block = cls(4, 3, padding=1, use_bias=False)
        inputs = {"data": nd(rng, 2, 3, 6, 6)}
    block.initialize()
    block.hybridize(static_alloc=True)
    block(*inputs.values())
    randomise(block, rng)
    expected = block(*inputs.values()).asnumpy()
    prefix = str(tmp_path / kind)
    block.export(prefix)
    for name, value in inputs.items():
        np.save(f"{prefix}-{name}.npy", value.asnumpy())
    subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, prefix, *inputs], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    np.testing.assert_allclose(np.load(prefix + "-out.npy"), expected, rtol=1e-5, atol=1e-6)
