"""Float64 NumPy reference of the deformable convolutions (DCNv2 and DCNv1), forward and backward.

Written from docs/semantics.md (section 1) to check the operators independently of their C++
code. The sampling uses a copy of the input padded with one ring of zeros, which is the border
rule restated: a sample at (py, px) with -1 < py < H and -1 < px < W has its four corners
inside the padded map, and corners on the ring read 0.

Layouts (NCHW), with K = kh*kw taps, G = groups, dg = deformable_groups:

* data (N, C, H, W)
* offset (N, 2*dg*K, Ho, Wo): channel g*2K + 2k is dy, g*2K + 2k + 1 is dx of tap k = i*kw + j
* mask (N, dg*K, Ho, Wo), or None for DCNv1 (modulation 1)
* weight (F, C/G, kh, kw)
* bias (F,), or None
* out (N, F, Ho, Wo), Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1 (likewise Wo)

Every function computes in float64 whatever the input dtype.
"""
import numpy as np

__all__ = ["output_size", "sample_positions", "deform_conv2d_forward", "deform_conv2d_backward"]


def output_size(in_size, kernel, stride, pad, dilate):
    """Output extent (Ho or Wo) of one spatial axis."""
    return (in_size + 2 * pad - dilate * (kernel - 1) - 1) // stride + 1


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(int(x) for x in v)


def sample_positions(offset, kernel, stride=(1, 1), pad=(0, 0), dilate=(1, 1),
                     deformable_groups=1):
    """Sampling positions of every (deformable group, tap, output pixel).

    offset : (N, 2*dg*K, Ho, Wo)
    Returns (py, px), each of shape (N, dg, kh, kw, Ho, Wo):
    ``py = ho*sh - ph + i*dh + dy`` and ``px = wo*sw - pw + j*dw + dx``.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, pad, dilate))
    n, _, ho, wo = offset.shape
    off = np.asarray(offset, dtype=np.float64).reshape(n, deformable_groups, kh, kw, 2, ho, wo)
    grid_y = (np.arange(ho) * sh - ph)[:, None] + (np.arange(kh) * dh)[:, None, None]  # (kh,Ho,1)
    grid_x = (np.arange(wo) * sw - pw)[None, :] + (np.arange(kw) * dw)[:, None, None]  # (kw,1,Wo)
    py = off[:, :, :, :, 0] + grid_y[None, None, :, None, :, :]
    px = off[:, :, :, :, 1] + grid_x[None, None, None, :, :, :]
    return py, px


class _Bilinear:
    """Bilinear samples of a group of channel planes at positions (py, px) under the DCNv2 rule.

    planes : (N, Cd, H, W); py, px : (N, Ho, Wo). Outside samples get all-zero weights.
    """

    def __init__(self, planes, py, px):
        n, cd, h, w = planes.shape
        self.shape = planes.shape
        self.inside = (py > -1) & (py < h) & (px > -1) & (px < w)
        py = np.where(self.inside, py, 0.0)
        px = np.where(self.inside, px, 0.0)
        y0, x0 = np.floor(py), np.floor(px)
        self.ly, self.lx = py - y0, px - x0
        # Row and column of the top-left corner in the zero-padded map (H+2, W+2).
        self.row = y0.astype(np.int64) + 1
        self.col = x0.astype(np.int64) + 1
        self.padded = np.pad(np.asarray(planes, dtype=np.float64),
                             ((0, 0), (0, 0), (1, 1), (1, 1)))
        self.batch = np.arange(n)[:, None, None]

    def corner(self, dy, dx):
        """Values of corner (y0+dy, x0+dx) of every sample: (N, Cd, Ho, Wo)."""
        v = self.padded[self.batch, :, self.row + dy, self.col + dx]  # (N, Ho, Wo, Cd)
        return np.moveaxis(v, -1, 1)

    def weights(self):
        """Corner weights keyed by (dy, dx), each (N, 1, Ho, Wo), zero for outside samples."""
        ly, lx = self.ly, self.lx
        ws = {(0, 0): (1 - ly) * (1 - lx), (0, 1): (1 - ly) * lx, (1, 0): ly * (1 - lx),
              (1, 1): ly * lx}
        return {k: (w * self.inside)[:, None] for k, w in ws.items()}

    def value(self):
        """Sampled values (N, Cd, Ho, Wo)."""
        return sum(w * self.corner(*k) for k, w in self.weights().items())

    def position_grads(self):
        """d value / d py and d value / d px, (N, Cd, Ho, Wo) each, zero for outside samples."""
        c00, c01, c10, c11 = (self.corner(0, 0), self.corner(0, 1), self.corner(1, 0),
                              self.corner(1, 1))
        ly, lx, inside = self.ly[:, None], self.lx[:, None], self.inside[:, None]
        d_py = ((1 - lx) * (c10 - c00) + lx * (c11 - c01)) * inside
        d_px = ((1 - ly) * (c01 - c00) + ly * (c11 - c10)) * inside
        return d_py, d_px

    def scatter(self, grad):
        """Adjoint of value(): spreads grad (N, Cd, Ho, Wo) onto the planes, (N, Cd, H, W)."""
        n, cd, h, w = self.shape
        hp, wp = h + 2, w + 2
        plane = (np.arange(n)[:, None] * cd + np.arange(cd)[None, :])[:, :, None, None]
        total = np.zeros(n * cd * hp * wp)
        for (dy, dx), wgt in self.weights().items():
            index = (plane * hp + (self.row + dy)[:, None]) * wp + (self.col + dx)[:, None]
            index = np.broadcast_to(index, grad.shape)
            total += np.bincount(index.ravel(), weights=(wgt * grad).ravel(),
                                 minlength=total.size)
        return total.reshape(n, cd, hp, wp)[:, :, 1:-1, 1:-1]


def _samplers(data, offset, kernel, stride, pad, dilate, deformable_groups):
    """Yields (channel slice, group index, i, j, _Bilinear) for every deformable group and tap."""
    kh, kw = _pair(kernel)
    py, px = sample_positions(offset, kernel, stride, pad, dilate, deformable_groups)
    per_group = data.shape[1] // deformable_groups
    for g in range(deformable_groups):
        channels = slice(g * per_group, (g + 1) * per_group)
        for i in range(kh):
            for j in range(kw):
                yield channels, g, i, j, _Bilinear(data[:, channels], py[:, g, i, j],
                                                   px[:, g, i, j])


def _columns(data, offset, mask, kernel, stride, pad, dilate, deformable_groups):
    """The modulated samples col (N, C, kh, kw, Ho, Wo) = m * v of every channel and tap."""
    kh, kw = _pair(kernel)
    n, c = data.shape[:2]
    ho, wo = offset.shape[2:]
    col = np.zeros((n, c, kh, kw, ho, wo))
    for channels, g, i, j, bil in _samplers(data, offset, kernel, stride, pad, dilate,
                                            deformable_groups):
        m = 1.0 if mask is None else mask[:, g * kh * kw + i * kw + j][:, None]
        col[:, channels, i, j] = m * bil.value()
    return col


def _check_shapes(data, offset, mask, weight, bias, kernel, stride, pad, dilate, groups,
                  deformable_groups):
    (kh, kw) = _pair(kernel)
    n, c, h, w = data.shape
    ho = output_size(h, kh, *(_pair(v)[0] for v in (stride, pad, dilate)))
    wo = output_size(w, kw, *(_pair(v)[1] for v in (stride, pad, dilate)))
    k = kh * kw
    assert c % groups == 0 and c % deformable_groups == 0, "C must divide by the groups"
    assert offset.shape == (n, 2 * deformable_groups * k, ho, wo), offset.shape
    assert mask is None or mask.shape == (n, deformable_groups * k, ho, wo), mask.shape
    assert weight.shape[1:] == (c // groups, kh, kw) and weight.shape[0] % groups == 0
    assert bias is None or bias.shape == (weight.shape[0],)


def _as64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def deform_conv2d_forward(data, offset, mask, weight, bias, stride=(1, 1), pad=(0, 0),
                          dilate=(1, 1), groups=1, deformable_groups=1):
    """Forward of the modulated deformable convolution (DCNv2; DCNv1 when mask is None).

    data (N, C, H, W), offset (N, 2*dg*K, Ho, Wo), mask (N, dg*K, Ho, Wo) or None,
    weight (F, C/groups, kh, kw), bias (F,) or None; stride, pad, dilate are (h, w) pairs.
    Returns out (N, F, Ho, Wo) in float64.
    """
    data, offset, mask, weight, bias = _as64(data, offset, mask, weight, bias)
    kernel = weight.shape[2:]
    _check_shapes(data, offset, mask, weight, bias, kernel, stride, pad, dilate, groups,
                  deformable_groups)
    col = _columns(data, offset, mask, kernel, stride, pad, dilate, deformable_groups)
    f, cg = weight.shape[:2]
    fg = f // groups
    out = np.concatenate([
        np.einsum("fcij,ncijyx->nfyx", weight[gr * fg:(gr + 1) * fg],
                  col[:, gr * cg:(gr + 1) * cg], optimize=True)
        for gr in range(groups)], axis=1)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_backward(out_grad, data, offset, mask, weight, bias, stride=(1, 1),
                           pad=(0, 0), dilate=(1, 1), groups=1, deformable_groups=1):
    """Analytic gradients of :func:`deform_conv2d_forward` for the output gradient out_grad.

    out_grad (N, F, Ho, Wo); the other arguments as in the forward.
    Returns a dict of float64 arrays shaped like the inputs: 'data', 'offset', 'weight', and
    'mask' / 'bias' when those inputs are given. Offset gradients are 0 for samples outside
    (-1, H) x (-1, W), and the piecewise-bilinear derivative elsewhere (positions on integer
    coordinates take the derivative of the cell whose top-left corner they are).
    """
    out_grad, data, offset, mask, weight, bias = _as64(out_grad, data, offset, mask, weight, bias)
    kernel = weight.shape[2:]
    kh, kw = kernel
    _check_shapes(data, offset, mask, weight, bias, kernel, stride, pad, dilate, groups,
                  deformable_groups)
    f, cg = weight.shape[:2]
    fg = f // groups
    col = _columns(data, offset, mask, kernel, stride, pad, dilate, deformable_groups)
    weight_grad = np.concatenate([
        np.einsum("nfyx,ncijyx->fcij", out_grad[:, gr * fg:(gr + 1) * fg],
                  col[:, gr * cg:(gr + 1) * cg], optimize=True)
        for gr in range(groups)], axis=0)
    col_grad = np.concatenate([
        np.einsum("fcij,nfyx->ncijyx", weight[gr * fg:(gr + 1) * fg],
                  out_grad[:, gr * fg:(gr + 1) * fg], optimize=True)
        for gr in range(groups)], axis=1)

    data_grad = np.zeros_like(data)
    offset_grad = np.zeros_like(offset)
    mask_grad = None if mask is None else np.zeros_like(mask)
    for channels, g, i, j, bil in _samplers(data, offset, kernel, stride, pad, dilate,
                                            deformable_groups):
        tap = g * kh * kw + i * kw + j
        m = 1.0 if mask is None else mask[:, tap][:, None]
        dcol = col_grad[:, channels, i, j]
        data_grad[:, channels] += bil.scatter(m * dcol)
        d_py, d_px = bil.position_grads()
        offset_grad[:, 2 * tap] = (m * dcol * d_py).sum(axis=1)
        offset_grad[:, 2 * tap + 1] = (m * dcol * d_px).sum(axis=1)
        if mask is not None:
            mask_grad[:, tap] = (dcol * bil.value()).sum(axis=1)

    grads = {"data": data_grad, "offset": offset_grad, "weight": weight_grad}
    if mask is not None:
        grads["mask"] = mask_grad
    if bias is not None:
        grads["bias"] = out_grad.sum(axis=(0, 2, 3))
    return grads
