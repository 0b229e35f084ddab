"""Random deformable convolution problems and their float64 reference results, without MXNet
(tests/gpu uses them on machines that have a GPU but no CUDA build of MXNet; there
tests/gpu/standalone.py provides the reference module without importing dcnv2_mx)."""
import numpy as np

from dcnv2_mx.tools.reference.conv import (deform_conv2d_backward, deform_conv2d_forward,
                                           output_size, sample_positions)

#: Fractional part of every random sampling position lies in this range, so that finite
#: differences never cross a bilinear cell edge or the border at -1 / H (docs/semantics.md: the
#: peers differ at samples exactly on integer coordinates).
FRACTION_RANGE = (0.1, 0.9)


class ConvInputs:
    """One deformable convolution call: its parameters, random float64 inputs and reference results.

    Attributes: `op` (operator name), `params` (keyword parameters of the operator), `arrays`
    (ordered dict: data (N, C, H, W), offset (N, 2*dg*K, Ho, Wo), [mask (N, dg*K, Ho, Wo)],
    weight (F, C/G, kh, kw), [bias (F,)]), `positions` (py, px), each (N, dg, kh, kw, Ho, Wo).
    The sampling positions are `offsets`: "jittered" (random; on, around and off the map),
    "clustered" (random in the central two by two cells) or "zero" (the regular grid).
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
        elif offsets == "clustered":
            py, px = self._clustered_positions(rng, base_y.shape)
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

    def _clustered_positions(self, rng, shape):
        """Random positions in the two by two cells at the centre of the map, none near an
        integer: many samples share corners (the worst case of the data gradient's sums)."""
        size = int(np.prod(shape))

        def axis(extent):
            cells = extent // 2 - 1 + rng.randint(0, 2, size)
            return cells + rng.uniform(*FRACTION_RANGE, size)

        height, width = self.shape[2:]
        return axis(height).reshape(shape), axis(width).reshape(shape)

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
