"""Helpers shared by several MXNet-level test modules (test modules never import each other):
the deformable convolution parameter grid, and random inputs and calls of the PS-RoI pooling."""
import mxnet as mx
import numpy as np
import pytest

from dcnv2_mx.tools.reference.psroi import size_pair

#: The parameter grid. Together the cases cover batch 1, 2 and 3 with im2col_step 2 (so also a
#: batch neither below nor divisible by it), num_group 1 and 2, num_deformable_group 1, 2 and 3,
#: kernels 3x3, 1x1, 3x2 and 5x5, stride (2, 1), pad (1, 0), dilate (2, 1), num_filter not
#: divisible by num_deformable_group, no_bias and DCNv1. Sizes are tiny: the numerical gradient
#: perturbs every input element.
CASES = {
    "b1-k3x3": dict(batch=1, channels=2, height=4, width=4, num_filter=2, kernel=(3, 3)),
    "b2-k3x2-s21-p10-d21-g2-dg2": dict(
        batch=2, channels=4, height=5, width=4, num_filter=2, kernel=(3, 2), stride=(2, 1),
        pad=(1, 0), dilate=(2, 1), num_group=2, num_deformable_group=2),
    "b3-k1x1-dg3-f2": dict(batch=3, channels=3, height=4, width=4, num_filter=2, kernel=(1, 1),
                           pad=(0, 0), num_deformable_group=3),
    "b1-k5x5-g2": dict(batch=1, channels=2, height=6, width=6, num_filter=2, kernel=(5, 5),
                       pad=(0, 0), num_group=2),
    "b2-k3x3-s21-p10-d21-g2-dg3-nobias": dict(
        batch=2, channels=6, height=4, width=5, num_filter=4, kernel=(3, 3), stride=(2, 1),
        pad=(1, 0), dilate=(2, 1), num_group=2, num_deformable_group=3, no_bias=True),
    "v1-b2-k3x2-p10-g2-dg2": dict(
        batch=2, channels=4, height=3, width=3, num_filter=2, kernel=(3, 2), pad=(1, 0),
        num_group=2, num_deformable_group=2, modulated=False),
    "v1-b3-k1x1-dg1": dict(batch=3, channels=2, height=3, width=4, num_filter=3, kernel=(1, 1),
                           pad=(0, 0), modulated=False),
}


def cases(*names):
    """pytest parameters of the named CASES (all when no name is given), with their ids."""
    return [pytest.param(CASES[n], id=n) for n in (names or CASES)]


# ----------------------------------------------------------------------------------------------
# Modulated deformable PS-RoI pooling


def make_inputs(rng, *, batch=2, output_dim=4, group_size=3, height=9, width=8, num_rois=4,
                num_classes=2, part=3, spatial_scale=0.5):
    """Random data, RoIs (some partly outside the image), trans and mask in float64; group_size
    and part are an int or an (h, w) pair."""
    (group_h, group_w), part = size_pair(group_size), size_pair(part)
    data = rng.uniform(-1, 1, (batch, output_dim * group_h * group_w, height, width))
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rois = np.zeros((num_rois, 5))
    rois[:, 0] = rng.randint(0, batch, num_rois)
    rois[:, 1] = rng.uniform(-0.3 * img_w, 0.7 * img_w, num_rois)
    rois[:, 2] = rng.uniform(-0.3 * img_h, 0.7 * img_h, num_rois)
    rois[:, 3] = rois[:, 1] + rng.uniform(2, 0.8 * img_w, num_rois)
    rois[:, 4] = rois[:, 2] + rng.uniform(2, 0.8 * img_h, num_rois)
    trans = rng.normal(0, 1, (num_rois, 2 * num_classes) + part)
    mask = rng.uniform(0, 1, (num_rois, num_classes) + part)
    return data, rois, trans, mask


def ours(data, rois, trans=None, mask=None, out_grad=None, dtype="float64", **params):
    """Our operator on NDArrays: out, and with out_grad also the input gradients."""
    arrays = {k: mx.nd.array(v, dtype=dtype) for k, v in
              dict(data=data, rois=rois, trans=trans, mask=mask).items() if v is not None}
    if out_grad is None:
        return mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **params).asnumpy()
    for a in arrays.values():
        a.attach_grad()
    with mx.autograd.record():
        out = mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **params)
    out.backward(mx.nd.array(out_grad, dtype=dtype))
    return out.asnumpy(), {k: a.grad.asnumpy() for k, a in arrays.items()}
