"""Shared helpers of the tests: loading the operators and building deformable convolution problems.

`import dcnv2_mx` loads the operator library once for the whole session (DCNV2_MX_LIBRARY
chooses another build of it).
"""
import mxnet as mx
import numpy as np
import pytest

import dcnv2_mx  # noqa: F401  (registers the operators in mx.nd.contrib / mx.sym.contrib)
from reference import deform_conv2d_backward, deform_conv2d_forward, output_size, sample_positions

#: Fractional part of every random sampling position lies in this range, so that finite
#: differences never cross a bilinear cell edge or the border at -1 / H (SPEC: the peers differ
#: at samples exactly on integer coordinates).
FRACTION_RANGE = (0.1, 0.9)


class ConvProblem:
    """One deformable convolution call: its parameters and random float64 inputs.

    Attributes: `op` (operator name), `params` (keyword parameters of the operator), `arrays`
    (ordered dict: data (N, C, H, W), offset (N, 2*dg*K, Ho, Wo), [mask (N, dg*K, Ho, Wo)],
    weight (F, C/G, kh, kw), [bias (F,)]), `positions` (py, px), each (N, dg, kh, kw, Ho, Wo).
    """

    def __init__(self, rng, batch=2, channels=4, height=5, width=5, num_filter=4, kernel=(3, 3),
                 stride=(1, 1), pad=(1, 1), dilate=(1, 1), num_group=1, num_deformable_group=1,
                 no_bias=False, modulated=True, im2col_step=2, offsets="jittered"):
        self.op = "DeformableConvolutionV2" if modulated else "DeformableConvolutionV1"
        self.params = dict(kernel=kernel, num_filter=num_filter, stride=stride, pad=pad,
                           dilate=dilate, num_group=num_group,
                           num_deformable_group=num_deformable_group, no_bias=no_bias,
                           im2col_step=im2col_step)
        self.shape = (batch, channels, height, width)
        kh, kw = kernel
        out_h = output_size(height, kh, stride[0], pad[0], dilate[0])
        out_w = output_size(width, kw, stride[1], pad[1], dilate[1])
        dg = num_deformable_group
        self.out_shape = (batch, num_filter, out_h, out_w)
        offset_shape = (batch, 2 * dg * kh * kw, out_h, out_w)
        base_y, base_x = sample_positions(np.zeros(offset_shape), kernel, stride, pad, dilate, dg)
        if offsets == "jittered":
            py, px = self._jittered_positions(rng, base_y.shape)
        elif offsets == "zero":
            py, px = base_y, base_x
        else:
            raise ValueError(offsets)
        self.positions = (py, px)
        offset = np.stack([py - base_y, px - base_x], axis=4).reshape(offset_shape)
        arrays = {"data": rng.uniform(-1, 1, self.shape), "offset": offset}
        if modulated:
            arrays["mask"] = rng.uniform(0.2, 1.2, (batch, dg * kh * kw, out_h, out_w))
        arrays["weight"] = rng.uniform(-1, 1, (num_filter, channels // num_group, kh, kw))
        if not no_bias:
            arrays["bias"] = rng.uniform(-1, 1, (num_filter,))
        self.arrays = arrays

    def _jittered_positions(self, rng, shape):
        """Random positions: mostly on the map, some in the (-1, 0) and (H-1, H) bands (placed
        on purpose, so every problem has them) and some outside; none near an integer."""
        height, width = self.shape[2:]
        size = int(np.prod(shape))

        def axis(extent):
            cells = rng.randint(-2, extent + 1, size)  # -2 and extent: outside the map
            return cells + rng.uniform(*FRACTION_RANGE, size)

        py, px = axis(height), axis(width)
        inside_y, inside_x = rng.uniform(0.5, height - 1.5), rng.uniform(0.5, width - 1.5)
        forced = rng.choice(size, 4, replace=False)
        band = [rng.uniform(-0.9, -0.1), rng.uniform(height - 0.9, height - 0.1),
                rng.uniform(-0.9, -0.1), rng.uniform(width - 0.9, width - 0.1)]
        py[forced] = [band[0], band[1], inside_y, inside_y]
        px[forced] = [inside_x, inside_x, band[2], band[3]]
        return py.reshape(shape), px.reshape(shape)

    @property
    def modulated(self):
        return "mask" in self.arrays

    def ref_params(self):
        """Keyword parameters of the NumPy reference."""
        p = self.params
        return dict(stride=p["stride"], pad=p["pad"], dilate=p["dilate"], groups=p["num_group"],
                    deformable_groups=p["num_deformable_group"])

    def _ref_args(self):
        a = self.arrays
        return (a["data"], a["offset"], a.get("mask"), a["weight"], a.get("bias"))

    def reference(self):
        """Float64 reference output (N, F, Ho, Wo)."""
        return deform_conv2d_forward(*self._ref_args(), **self.ref_params())

    def reference_grads(self, out_grad):
        """Float64 reference gradients keyed like `arrays`."""
        return deform_conv2d_backward(out_grad, *self._ref_args(), **self.ref_params())

    def nd_arrays(self, dtype="float64"):
        """The inputs as NDArrays of `dtype`, keyed like `arrays`."""
        return {k: mx.nd.array(v, dtype=dtype) for k, v in self.arrays.items()}

    def run_nd(self, dtype="float64", out_grad=None, **overrides):
        """Runs the operator imperatively: the output as NumPy, and with `out_grad` (N, F, Ho, Wo)
        also the gradients of all inputs (a dict keyed like `arrays`)."""
        arrays = self.nd_arrays(dtype)
        op = getattr(mx.nd.contrib, self.op)
        params = dict(self.params, **overrides)
        if out_grad is None:
            return op(**arrays, **params).asnumpy()
        for a in arrays.values():
            a.attach_grad()
        with mx.autograd.record():
            out = op(**arrays, **params)
        out.backward(mx.nd.array(out_grad, dtype=dtype))
        return out.asnumpy(), {k: a.grad.asnumpy() for k, a in arrays.items()}

    def symbol(self, name="dcn", **overrides):
        """The operator on variables named like `arrays` (weight/bias auto-created as
        `<name>_weight` / `<name>_bias`)."""
        inputs = {k: mx.sym.var(k) for k in self.arrays if k not in ("weight", "bias")}
        return getattr(mx.sym.contrib, self.op)(**inputs, name=name,
                                                **dict(self.params, **overrides))

    def symbol_location(self, name="dcn"):
        """`arrays` keyed by the argument names of :meth:`symbol`."""
        return {(f"{name}_{k}" if k in ("weight", "bias") else k): v
                for k, v in self.arrays.items()}


@pytest.fixture
def rng():
    """A fixed-seed generator; also seeds NumPy's global one (used by MXNet's test utils)."""
    np.random.seed(7)
    mx.random.seed(7)
    return np.random.RandomState(1234)


@pytest.fixture
def make_problem(rng):
    """Factory: make_problem(**ConvProblem keyword arguments) -> ConvProblem."""
    return lambda **kwargs: ConvProblem(rng, **kwargs)
