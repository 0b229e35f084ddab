"""Float64 NumPy reference of (modulated) deformable PS-RoI pooling, forward and backward.

Written from docs/semantics.md (section 2), one sample at a time, to
check the operator independently of its C++ code. Arrays follow the operator's layouts:
data (N, output_dim*G*G, H, W), rois (R, 5) (batch index in (-1, N), truncated toward zero as
by MXNet's DeformablePSROIPooling), trans (R, 2*num_classes, part, part) or None,
mask (R, num_classes, part, part) or None, out (R, output_dim, P, P). Each size (pooled, part,
group) is an int or an (h, w) pair: data then has output_dim*Gh*Gw channels, trans and mask
(part_h, part_w) cells and out (Ph, Pw) bins.
"""
import math

import numpy as np


def size_pair(size):
    """(h, w) of a size given as an int (square) or a pair."""
    return (size, size) if np.isscalar(size) else tuple(size)


def round_half_away(v):
    """C's round(): halves go away from zero (NumPy's round goes to even)."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def part_index(p, pooled_size, part_size):
    """The part cell row (or column) of bin row (or column) p."""
    return p * part_size // pooled_size


def roi_window(roi, spatial_scale):
    """(start_h, start_w, height, width) of a RoI on the feature map."""
    _, x1, y1, x2, y2 = [float(v) for v in roi]
    start_w = round_half_away(x1) * spatial_scale - 0.5
    start_h = round_half_away(y1) * spatial_scale - 0.5
    end_w = (round_half_away(x2) + 1.0) * spatial_scale - 0.5
    end_h = (round_half_away(y2) + 1.0) * spatial_scale - 0.5
    return start_h, start_w, max(end_h - start_h, 0.1), max(end_w - start_w, 0.1)


def bin_sample_positions(roi, offset_xy, ph, pw, p):
    """Positions (y, x) of the S*S samples of bin (ph, pw), before the border rule.

    `offset_xy` is the bin's (x, y) entry of trans (0, 0 without offsets); `p` holds the
    operator's parameters as a dict.
    """
    start_h, start_w, roi_h, roi_w = roi_window(roi, p["spatial_scale"])
    (Ph, Pw), S = size_pair(p["pooled_size"]), p["sample_per_part"]
    bin_h, bin_w = roi_h / Ph, roi_w / Pw
    hstart = ph * bin_h + start_h + offset_xy[1] * p["trans_std"] * roi_h
    wstart = pw * bin_w + start_w + offset_xy[0] * p["trans_std"] * roi_w
    return [(hstart + ih * bin_h / S, wstart + iw * bin_w / S)
            for ih in range(S) for iw in range(S)]


def _sample(plane, y, x):
    """Value, corners [(y, x, weight)] and d value / d (y, x) of one sample, or None if unused."""
    H, W = plane.shape
    if not (-0.5 <= y <= H - 0.5 and -0.5 <= x <= W - 0.5):  # False for NaN
        return None
    y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
    y0, x0, y1, x1 = math.floor(y), math.floor(x), math.ceil(y), math.ceil(x)
    ly, lx = y - y0, x - x0
    corners = [(y0, x0, (1 - ly) * (1 - lx)), (y0, x1, (1 - ly) * lx),
               (y1, x0, ly * (1 - lx)), (y1, x1, ly * lx)]
    value = sum(w * plane[cy, cx] for cy, cx, w in corners)
    # The far corner is the ceiling: on grid lines (and where clamped) the derivative is 0.
    d_dy = (1 - lx) * (plane[y1, x0] - plane[y0, x0]) + lx * (plane[y1, x1] - plane[y0, x1])
    d_dx = (1 - ly) * (plane[y0, x1] - plane[y0, x0]) + ly * (plane[y1, x1] - plane[y1, x0])
    return value, corners, d_dy, d_dx


def psroi_pooling(data, rois, trans, mask, spatial_scale, output_dim, group_size, pooled_size,
                  part_size=0, sample_per_part=1, trans_std=0.0, out_grad=None):
    """Forward, and with `out_grad` also the gradients.

    Returns out, or (out, {"data": ..., "trans": ..., "mask": ...}) with None for absent inputs.
    """
    data = np.asarray(data, np.float64)
    rois = np.asarray(rois, np.float64)
    (Ph, Pw), (Gh, Gw) = size_pair(pooled_size), size_pair(group_size)
    part_h, part_w = size_pair(part_size)
    part_h, part_w = part_h or Ph, part_w or Pw
    # The operator's real parameters are float32, like MXNet's.
    spatial_scale, trans_std = float(np.float32(spatial_scale)), float(np.float32(trans_std))
    p = dict(spatial_scale=spatial_scale, pooled_size=(Ph, Pw), sample_per_part=sample_per_part,
             trans_std=trans_std)
    if trans is not None:
        num_classes = trans.shape[1] // 2
    else:
        num_classes = mask.shape[1] if mask is not None else 1
    per_class = output_dim // num_classes
    R = rois.shape[0]
    out = np.zeros((R, output_dim, Ph, Pw))
    grads = {"data": np.zeros_like(data),
             "trans": None if trans is None else np.zeros(trans.shape),
             "mask": None if mask is None else np.zeros(mask.shape)}
    for r in range(R):
        if not -1 < rois[r, 0] < data.shape[0]:
            raise ValueError(f"rois[{r}, 0] = {rois[r, 0]} is not in (-1, {data.shape[0]})")
        b = int(rois[r, 0])  # toward zero: (-1, 0) is image 0
        _, _, roi_h, roi_w = roi_window(rois[r], spatial_scale)
        for ctop in range(output_dim):
            cls = ctop // per_class
            for ph in range(Ph):
                for pw in range(Pw):
                    cell = (part_index(ph, Ph, part_h), part_index(pw, Pw, part_w))
                    offset_xy = (0.0, 0.0) if trans is None else (
                        trans[r, 2 * cls][cell], trans[r, 2 * cls + 1][cell])
                    m = 1.0 if mask is None else mask[r, cls][cell]
                    c = (ctop * Gh + ph * Gh // Ph) * Gw + pw * Gw // Pw
                    plane = data[b, c]
                    samples = [_sample(plane, y, x)
                               for y, x in bin_sample_positions(rois[r], offset_xy, ph, pw, p)]
                    samples = [s for s in samples if s is not None]
                    if not samples:
                        continue
                    count = len(samples)
                    average = sum(s[0] for s in samples) / count
                    out[r, ctop, ph, pw] = m * average
                    if out_grad is None:
                        continue
                    dy = out_grad[r, ctop, ph, pw]
                    if mask is not None:
                        grads["mask"][r, cls][cell] += dy * average
                    d_sample = dy * m / count
                    for _, corners, d_dy, d_dx in samples:
                        for cy, cx, w in corners:
                            grads["data"][b, c, cy, cx] += w * d_sample
                        if trans is not None:
                            grads["trans"][r, 2 * cls][cell] += d_dx * d_sample * trans_std * roi_w
                            grads["trans"][r, 2 * cls + 1][cell] += (
                                d_dy * d_sample * trans_std * roi_h)
    return out if out_grad is None else (out, grads)
