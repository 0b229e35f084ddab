"""Gluon blocks: deformable convolutions with their offset branch, and the DCNv2 RoI head.

* :class:`DeformableConvolutionV2` — modulated deformable convolution (DCNv2): a plain
  convolution predicts offsets and masks, which steer the sampling of the main convolution.
  Drop-in for MXNet's ``gluon.contrib.cnn.ModulatedDeformableConvolution`` (same constructor
  arguments and parameter names), but trains on CPU, with any batch size and with ``groups``.
* :class:`DeformableConvolutionV1` — the same with offsets only.
* :class:`ModulatedDeformableRoIPooling` — the paper's RoI head: plain pooling, fully connected
  layers predicting offsets and masks, modulated deformable pooling.

Blocks hybridize (``static_alloc`` too), export, and reload with ``SymbolBlock.imports`` in any
process that has imported ``dcnv2_mx``.
"""
import mxnet as mx
from mxnet.base import numeric_types
from mxnet.gluon import HybridBlock, nn

from . import ops  # noqa: F401  (installs F.contrib.DeformableConvolutionV2 / V1)

__all__ = ["DeformableConvolutionV2", "DeformableConvolutionV1", "ModulatedDeformableRoIPooling",
           "dense_offset_weight",
           "replace_child", "replace_children", "replace_mxnet_deformable_convolutions"]

#: Names of the main convolution's weight and bias for each ``param_naming``.
_PARAM_NAMES = {"mxnet": ("deformable_conv_weight", "deformable_conv_bias"),
                "conv2d": ("weight", "bias")}
_MASK_ACTIVATIONS = ("2sigmoid", "sigmoid")
#: The offset convolution computes a multiple of this many filters (see _offset_convolution).
_OFFSET_FILTER_MULTIPLE = 8


def _mask(F, logits, activation):
    """Masks from logits: ``sigmoid`` or ``2*sigmoid`` (mask 1 at logit 0)."""
    mask = F.sigmoid(logits)
    return mask * 2 if activation == "2sigmoid" else mask


def _zero_rows(F, value, rows):
    """Zeros shaped like `value` (n, ...) but with `rows` <= n rows along axis 0.

    Taken from a slice of `value` so that graph shape inference knows their number of
    dimensions before their sizes: MXNet's concat would take an input of unknown dimensions for
    an empty one and fix the output's size too early.
    """
    return F.zeros_like(F.slice_axis(value, axis=0, begin=0, end=rows))


def _check_mask_activation(owner, activation):
    if activation not in _MASK_ACTIVATIONS:
        raise ValueError(f"{owner}: mask_activation must be one of {_MASK_ACTIVATIONS}, "
                         f"got {activation!r}")


def _activation_of(block):
    """The activation name of a Gluon convolution block (its ``act`` child), or None."""
    return block.act._act_type if block.act else None


def _pair(value, name):
    pair = (value,) * 2 if isinstance(value, numeric_types) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _size_repr(pair):
    """An (h, w) size as given to a block: the int of a square size, else the pair."""
    return pair[0] if pair[0] == pair[1] else pair


class _DeformableConvolution(HybridBlock):
    """Offset convolution + deformable convolution; subclasses say how the offsets are used.

    ``_channels_per_tap``: offset-conv outputs per deformable group and kernel tap (2 offsets,
    plus 1 mask logit for DCNv2).
    """

    _channels_per_tap = None

    def __init__(self, channels, kernel_size=(1, 1), strides=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups=1, num_deformable_group=1, layout="NCHW", use_bias=True,
                 in_channels=0, activation=None, weight_initializer=None,
                 bias_initializer="zeros", offset_weight_initializer="zeros",
                 offset_bias_initializer="zeros", offset_use_bias=True, im2col_step=64,
                 offset_lr_mult=0.1, param_naming="mxnet", prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if layout != "NCHW":
            raise ValueError(f"{type(self).__name__}: layout must be 'NCHW', got {layout!r}")
        if param_naming not in _PARAM_NAMES:
            raise ValueError(f"{type(self).__name__}: param_naming must be one of "
                             f"{sorted(_PARAM_NAMES)}, got {param_naming!r}")
        kernel = _pair(kernel_size, "kernel_size")
        geometry = dict(kernel=kernel, stride=_pair(strides, "strides"),
                        pad=_pair(padding, "padding"), dilate=_pair(dilation, "dilation"))
        taps = kernel[0] * kernel[1]
        self._channels = channels
        self._offset_channels = 2 * num_deformable_group * taps
        # The offset conv is never grouped: every offset may depend on every input channel.
        self._offset_conv = dict(geometry, num_filter=self._channels_per_tap
                                 * num_deformable_group * taps, no_bias=not offset_use_bias)
        # Zero filters _offset_convolution appends, up to a multiple of _OFFSET_FILTER_MULTIPLE;
        # none for the few filters of 1x1 kernels (fewer than that would add).
        pad = -self._offset_conv["num_filter"] % _OFFSET_FILTER_MULTIPLE
        self._offset_pad = pad if pad <= self._offset_conv["num_filter"] else 0
        self._deform_conv = dict(geometry, num_filter=channels, num_group=groups,
                                 num_deformable_group=num_deformable_group,
                                 no_bias=not use_bias, im2col_step=im2col_step)
        self._param_names = _PARAM_NAMES[param_naming]
        weight_name, bias_name = self._param_names
        with self.name_scope():
            # Created in the order of MXNet's block, so that collect_params() orders alike.
            setattr(self, weight_name, self.params.get(
                weight_name, shape=(channels, in_channels // groups) + kernel,
                init=weight_initializer, allow_deferred_init=True))
            setattr(self, bias_name, self.params.get(
                bias_name, shape=(channels,), init=bias_initializer,
                allow_deferred_init=True) if use_bias else None)
            self.offset_weight = self.params.get(
                "offset_weight", shape=(self._offset_conv["num_filter"], in_channels) + kernel,
                init=offset_weight_initializer, allow_deferred_init=True)
            self.offset_bias = self.params.get(
                "offset_bias", shape=(self._offset_conv["num_filter"],),
                init=offset_bias_initializer,
                allow_deferred_init=True) if offset_use_bias else None
            self.act = nn.Activation(activation, prefix=activation + "_") if activation else None
        # Set after creation: a Parameter shared through `params` must not conflict on lr_mult.
        for param in (self.offset_weight, self.offset_bias):
            if param is not None:
                param.lr_mult = offset_lr_mult

    @classmethod
    def from_conv2d(cls, conv, **kwargs):
        """A deformable version of the Conv2D `conv`, sharing its weight and bias Parameters.

        The result keeps `conv`'s prefix and parameter names (``param_naming='conv2d'``), so
        parameter files of the plain network — pretrained weights — load into it and regexes on
        parameter names still match; only ``offset_weight`` / ``offset_bias`` are new. With the
        default zero-initialised offset branch and ``mask_activation='2sigmoid'`` it computes
        exactly what `conv` computed until the offsets train. `kwargs` go to the constructor
        (e.g. ``offset_lr_mult``, ``num_deformable_group``).
        """
        conv_args = conv._kwargs
        if len(conv_args["kernel"]) != 2 or conv_args["layout"] != "NCHW":
            raise ValueError(f"from_conv2d needs a 2-D NCHW convolution, got {conv!r}")
        return cls(conv_args["num_filter"], conv_args["kernel"], conv_args["stride"],
                   conv_args["pad"], conv_args["dilate"], conv_args["num_group"],
                   use_bias=not conv_args["no_bias"],
                   in_channels=conv._in_channels,
                   activation=_activation_of(conv),
                   weight_initializer=conv.weight.init,
                   bias_initializer=conv.bias.init if conv.bias is not None else "zeros",
                   param_naming="conv2d", prefix=conv.prefix, params=conv.params, **kwargs)

    def hybrid_forward(self, F, x, **params):
        weight_name, bias_name = self._param_names
        offset = self._offset_convolution(F, x, params["offset_weight"], params.get("offset_bias"))
        out = self._deform(F, x, offset, params[weight_name], params.get(bias_name))
        return self.act(out) if self.act else out

    def _offset_convolution(self, F, x, weight, bias):
        """The offset convolution of data x (N, C, H, W): (N, n, Ho, Wo), n the offset
        filters rounded up to a multiple of _OFFSET_FILTER_MULTIPLE; channels past
        ``offset_weight``'s filters come from zero filters (and zero biases) and are unused.

        Why round up: oneDNN runs a 3x3 convolution with 27 filters (DCNv2) or 18 (DCNv1)
        through im2col and GEMM, at about half the speed of its direct kernel, which it picks
        for 32 or 24 (README, Performance). The zero filters are appended to the weight in the
        graph, so parameters keep their shapes.
        """
        conv = dict(self._offset_conv)
        if self._offset_pad:
            conv["num_filter"] += self._offset_pad
            weight, bias = (None if v is None else
                            F.concat(v, _zero_rows(F, v, self._offset_pad), dim=0)
                            for v in (weight, bias))
        return F.Convolution(data=x, weight=weight, bias=bias, name="offset", **conv)

    def _deform(self, F, x, offset, weight, bias):
        raise NotImplementedError

    def _extra_repr(self):
        return ""

    def __repr__(self):
        weight = getattr(self, self._param_names[0])
        conv = self._deform_conv
        return (f"{type(self).__name__}({weight.shape[1] * conv['num_group'] or None} -> "
                f"{self._channels}, kernel_size={conv['kernel']}, stride={conv['stride']}, "
                f"padding={conv['pad']}, dilation={conv['dilate']}, groups={conv['num_group']}, "
                f"num_deformable_group={conv['num_deformable_group']}, "
                f"bias={not conv['no_bias']}{self._extra_repr()}"
                f"{', ' + repr(self.act) if self.act else ''})")


class DeformableConvolutionV2(_DeformableConvolution):
    """2-D modulated deformable convolution (DCNv2, Zhu et al. 2018, arXiv 1811.11168).

    A plain convolution with the same kernel, stride, padding and dilation (``offset_weight``,
    ``offset_bias``; zero-initialised, never grouped) predicts, per output pixel, kernel tap and
    deformable group, an offset (dy, dx) and a mask logit. The mask logits pass through
    `mask_activation`, and ``mx.sym.contrib.DeformableConvolutionV2`` samples the input at the
    offset positions, multiplies by the masks and convolves with ``deformable_conv_weight``.

    Accepts the constructor arguments of MXNet's
    ``gluon.contrib.cnn.ModulatedDeformableConvolution`` (all but its internal ``op_name`` and
    ``adj``) and names its parameters alike, so that block's parameter files load unchanged
    (see :func:`dense_offset_weight` for ``groups > 1``, where MXNet's block groups its offset
    convolution).

    Parameters
    ----------
    channels : int
        Output channels F.
    kernel_size, strides, padding, dilation : int or pair of ints
        Geometry of the main and the offset convolution; defaults (1, 1), (1, 1), (0, 0), (1, 1).
    groups : int, default 1
        Groups of the main convolution (C and F divisible by it).
    num_deformable_group : int, default 1
        Groups of input channels sharing offsets and masks (dg; C divisible by it).
    layout : str, default 'NCHW'
        Only 'NCHW'.
    use_bias : bool, default True
        Bias of the main convolution.
    in_channels : int, default 0
        C; 0 defers the parameter shapes to the first forward.
    activation : str, optional
        Activation applied to the output (as in ``nn.Activation``).
    weight_initializer, bias_initializer : Initializer, defaults None (global) and 'zeros'
        Main convolution.
    offset_weight_initializer, offset_bias_initializer : Initializer, default 'zeros'
        Offset convolution; zeros make a fresh block sample the regular grid.
    offset_use_bias : bool, default True
    im2col_step : int, default 64
        Accepted for compatibility; any batch size works.
    offset_lr_mult : float, default 0.1
        Learning-rate multiplier of the offset convolution: the paper trains the offset and
        mask branch at 0.1 times the base rate (MXNet's block has no such knob, i.e. 1.0).
    mask_activation : {'2sigmoid', 'sigmoid'}, default '2sigmoid', keyword only
        ``2*sigmoid(logit)`` (the DCNv2 release, MXNet's block, GluonCV's pretrained CenterNet
        weights) or the paper's ``sigmoid(logit)``. The default makes the initial mask 1, so a
        fresh block — or a pretrained Conv2D converted with :meth:`from_conv2d` — computes
        exactly the plain convolution until the offset branch trains; with 'sigmoid' every
        converted layer would start at half its pretrained response.
    param_naming : {'mxnet', 'conv2d'}, default 'mxnet'
        Names of the main weight and bias: ``deformable_conv_weight`` / ``deformable_conv_bias``
        (MXNet's block) or ``weight`` / ``bias`` (Conv2D; see :meth:`from_conv2d`).
    prefix, params : as for any Block.

    Shapes
    ------
    data : (N, C, H, W)
    offset_weight : (3*dg*kh*kw, C, kh, kw); offset_bias : (3*dg*kh*kw,)
    deformable_conv_weight : (F, C/groups, kh, kw); deformable_conv_bias : (F,)
    out : (N, F, Ho, Wo), ``Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1`` (likewise Wo)
    """

    _channels_per_tap = 3

    def __init__(self, *args, mask_activation="2sigmoid", **kwargs):
        super().__init__(*args, **kwargs)
        _check_mask_activation("DeformableConvolutionV2", mask_activation)
        self._mask_activation = mask_activation

    @classmethod
    def from_mxnet(cls, block, **kwargs):
        """Our block in place of MXNet's ``ModulatedDeformableConvolution`` `block`.

        Shares `block`'s Parameters (same prefix and names, data kept whether initialised or
        deferred), so the result computes what `block` computed. With ``groups > 1`` MXNet's
        offset convolution is grouped; the result gets a dense ``offset_weight`` holding the
        same values (:func:`dense_offset_weight`). `kwargs` go to the constructor.
        """
        deform = block._kwargs_deformable_conv
        groups = deform["num_group"]
        if deform["layout"] != "NCHW":
            raise ValueError(f"from_mxnet needs an NCHW block, got layout {deform['layout']!r}")
        shared = block.collect_params(None if groups == 1 else r"^(?!.*offset_weight$)")
        new = cls(deform["num_filter"], deform["kernel"], deform["stride"], deform["pad"],
                  deform["dilate"], groups, deform["num_deformable_group"],
                  use_bias=not deform["no_bias"],
                  in_channels=block._in_channels,
                  activation=_activation_of(block),
                  weight_initializer=block.deformable_conv_weight.init,
                  bias_initializer=(block.deformable_conv_bias.init
                                    if block.deformable_conv_bias is not None else "zeros"),
                  offset_weight_initializer=block.offset_weight.init,
                  offset_bias_initializer=(block.offset_bias.init
                                           if block.offset_bias is not None else "zeros"),
                  offset_use_bias=block.offset_bias is not None,
                  prefix=block.prefix, params=shared, **kwargs)
        grouped = block.offset_weight
        # Gluon has no public "is initialised"; a deferred weight needs no conversion.
        if groups > 1 and grouped._data is not None:
            dense = dense_offset_weight(grouped.data(), groups)
            new.offset_weight.initialize(mx.init.Constant(dense), ctx=grouped.list_ctx())
        return new

    def _deform(self, F, x, offset, weight, bias):
        offsets, mask = self._offsets_and_mask(F, offset)
        return F.contrib.DeformableConvolutionV2(data=x, offset=offsets, mask=mask, weight=weight,
                                                 bias=bias, name="fwd", **self._deform_conv)

    def _offsets_and_mask(self, F, offset):
        """The offset convolution's output (N, n >= 3*dg*kh*kw, Ho, Wo) split into the
        offsets (N, 2*dg*kh*kw, Ho, Wo) and the activated masks (N, dg*kh*kw, Ho, Wo)."""
        offsets = F.slice_axis(offset, axis=1, begin=0, end=self._offset_channels)
        mask = _mask(F, F.slice_axis(offset, axis=1, begin=self._offset_channels,
                                     end=self._offset_conv["num_filter"]), self._mask_activation)
        return offsets, mask

    def _extra_repr(self):
        return f", mask_activation={self._mask_activation!r}"

    def _alias(self):
        return "modulated_deformable_conv"


class DeformableConvolutionV1(_DeformableConvolution):
    """2-D deformable convolution (DCNv1, Dai et al. 2017) with the DCNv2 border rule.

    As :class:`DeformableConvolutionV2` without masks: the offset convolution has
    ``2*dg*kh*kw`` outputs, all offsets, and ``mx.sym.contrib.DeformableConvolutionV1`` does
    the sampling. Constructor and parameter names match MXNet's
    ``gluon.contrib.cnn.DeformableConvolution``, whose parameter files load; MXNet's operator
    samples with an older border rule, so outputs differ where samples leave the map.

    Parameters
    ----------
    As :class:`DeformableConvolutionV2`, without ``mask_activation``.

    Shapes
    ------
    As :class:`DeformableConvolutionV2` — data (N, C, H, W) to out (N, F, Ho, Wo) — except
    offset_weight : (2*dg*kh*kw, C, kh, kw) and offset_bias : (2*dg*kh*kw,).
    """

    _channels_per_tap = 2

    def _deform(self, F, x, offset, weight, bias):
        if self._offset_pad:
            offset = F.slice_axis(offset, axis=1, begin=0, end=self._offset_channels)
        return F.contrib.DeformableConvolutionV1(data=x, offset=offset, weight=weight, bias=bias,
                                                 name="fwd", **self._deform_conv)

    def _alias(self):
        return "deformable_conv"


class ModulatedDeformableRoIPooling(HybridBlock):
    """The DCNv2 RoI head: modulated deformable RoI pooling with learnt offsets and masks.

    As in the paper (section 3): the RoI is first pooled without offsets on a part_h x part_w
    grid (group_size 1, `sample_per_part` samples per bin side); two fully connected layers of
    `hidden_units` with ReLU and a zero-initialised one with ``3*part_h*part_w`` outputs
    predict, per part cell, an offset (x then y, as fractions of the RoI size, scaled by
    `trans_std`) and a mask logit; ``mx.sym.contrib.ModulatedDeformablePSROIPooling`` then
    pools the RoI again with the bins shifted and weighted by them. At initialisation the
    offsets are 0 and the mask is ``mask_activation(0)``.

    Parameters
    ----------
    channels : int
        C, channels of the feature map (the pooling keeps them).
    pooled_size : int or (int, int), default 7
        (Ph, Pw), output bins per column and row (an int P means (P, P)).
    part_size : int or (int, int), optional
        (part_h, part_w), the offset/mask grid (default pooled_size); the paper uses 7. Bins of
        the output use the offset of the cell they fall in, so e.g. P=14 with part_size=7 pools
        at 14 x 14 but feeds the fully connected layers 4 times fewer inputs.
    spatial_scale : float, default 1/16
        Feature map size over image size, for :meth:`hybrid_forward`.
    sample_per_part : int, default 2
        Samples per bin side.
    trans_std : float, default 0.1
        Scale of the predicted offsets.
    hidden_units : int, default 1024
        Width of the two hidden fully connected layers.
    mask_activation : {'sigmoid', '2sigmoid'}, default 'sigmoid'
        The paper's sigmoid, or ``2*sigmoid`` (initial mask 1, i.e. plain average pooling).
    offset_lr_mult : float, default 0.1
        Learning-rate multiplier of the three fully connected layers (the paper trains the
        added offset and modulation layers at 0.1 times the base rate).
    prefix, params : as for any Block.

    Shapes
    ------
    data : (N, C, H, W)
    rois : (R, 5), ``[batch_index, x1, y1, x2, y2]`` in image pixels
    out : (R, C, Ph, Pw)
    """

    def __init__(self, channels, pooled_size=7, part_size=None, spatial_scale=1 / 16,
                 sample_per_part=2, trans_std=0.1, hidden_units=1024, mask_activation="sigmoid",
                 offset_lr_mult=0.1, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        _check_mask_activation("ModulatedDeformableRoIPooling", mask_activation)
        self._channels = channels
        self._pooled_size = _pair(pooled_size, "pooled_size")
        self._part_size = _pair(part_size or pooled_size, "part_size")
        self._spatial_scale = spatial_scale
        self._sample_per_part = sample_per_part
        self._trans_std = trans_std
        self._mask_activation = mask_activation
        with self.name_scope():
            self.offset_head = nn.HybridSequential(prefix="offset_")
            with self.offset_head.name_scope():
                self.offset_head.add(
                    nn.Dense(hidden_units, activation="relu"),
                    nn.Dense(hidden_units, activation="relu"),
                    nn.Dense(3 * self._part_cells(), weight_initializer="zeros"))
        for param in self.offset_head.collect_params().values():
            param.lr_mult = offset_lr_mult

    def _part_cells(self):
        return self._part_size[0] * self._part_size[1]

    def pool_plain(self, F, data, rois, spatial_scale):
        """Pooling without offsets, (R, C, part_h, part_w): the input of
        :meth:`offsets_and_masks`.

        This and the two methods below are the steps of :meth:`hybrid_forward`, for callers that
        pool one RoI set from several feature maps (FPN) inside their own ``hybrid_forward``.
        """
        return self._pool(F, data, rois, spatial_scale, self._part_size)

    def offsets_and_masks(self, F, pooled):
        """Offsets (R, 2, part_h, part_w) and masks (R, 1, part_h, part_w) from
        :meth:`pool_plain`."""
        cells = self._part_cells()
        fused = self.offset_head(pooled)
        trans = F.reshape(F.slice_axis(fused, axis=1, begin=0, end=2 * cells),
                          shape=(-1, 2) + self._part_size)
        mask = F.reshape(_mask(F, F.slice_axis(fused, axis=1, begin=2 * cells, end=None),
                               self._mask_activation),
                         shape=(-1, 1) + self._part_size)
        return trans, mask

    def pool_modulated(self, F, data, rois, spatial_scale, trans, mask):
        """The head's output (R, C, Ph, Pw): pooling shifted by `trans` and weighted by
        `mask`."""
        return self._pool(F, data, rois, spatial_scale, self._pooled_size, trans, mask)

    def _pool(self, F, data, rois, spatial_scale, pooled_size, trans=None, mask=None):
        return F.contrib.ModulatedDeformablePSROIPooling(
            data=data, rois=rois, trans=trans, mask=mask, spatial_scale=spatial_scale,
            output_dim=self._channels, group_size=1, pooled_size=pooled_size,
            part_size=self._part_size, sample_per_part=self._sample_per_part,
            trans_std=self._trans_std, no_trans=trans is None)

    def hybrid_forward(self, F, data, rois):
        plain = self.pool_plain(F, data, rois, self._spatial_scale)
        trans, mask = self.offsets_and_masks(F, plain)
        return self.pool_modulated(F, data, rois, self._spatial_scale, trans, mask)

    def _alias(self):
        return "modulated_roi_pool"

    def __repr__(self):
        return (f"{type(self).__name__}(channels={self._channels}, "
                f"pooled_size={_size_repr(self._pooled_size)}, "
                f"part_size={_size_repr(self._part_size)}, "
                f"spatial_scale={self._spatial_scale}, sample_per_part={self._sample_per_part}, "
                f"trans_std={self._trans_std}, mask_activation={self._mask_activation!r},\n"
                f"  {self.offset_head!r})")


def dense_offset_weight(weight, groups):
    """The dense equivalent of a grouped offset-convolution weight (MXNet's block, groups > 1).

    MXNet's ``ModulatedDeformableConvolution`` groups its offset convolution like the main one;
    ours is dense. Output channel o of the grouped weight reads input channels of group
    ``o // (O / groups)``; the dense weight holds those values there and zeros elsewhere, so
    both compute the same offsets. To load such a block's parameter file into ours::

        saved = mx.nd.load(path)
        saved["offset_weight"] = dense_offset_weight(saved["offset_weight"], groups)
        mx.nd.save(path, saved)

    Shapes: weight (O, C/groups, kh, kw) -> (O, C, kh, kw), same dtype and context.
    """
    out_channels, group_channels = weight.shape[:2]
    if groups < 1 or out_channels % groups:
        raise ValueError(f"dense_offset_weight: groups={groups} must divide the "
                         f"{out_channels} output channels")
    dense = mx.nd.zeros((out_channels, group_channels * groups) + weight.shape[2:],
                        ctx=weight.context, dtype=weight.dtype)
    per_group = out_channels // groups
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        dense[rows, g * group_channels:(g + 1) * group_channels] = weight[rows]
    return dense


def replace_child(parent, key, new):
    """Puts Block `new` in place of `parent`'s child `key` (attribute name or Sequential index).

    Keeps the key, so structural parameter names (``save_parameters``) stay. Call before
    ``hybridize()``/the first forward, or hybridize again after.
    """
    if parent.__dict__.get(key) is not None:
        # Gluon refuses to rebind an attribute to a Block of another type; unbind it first.
        delattr(parent, key)
        setattr(parent, key, new)
    else:
        parent.register_child(new, key)


def replace_children(block, convert):
    """Replaces, in place, every descendant ``child`` for which ``convert(child)`` returns a Block.

    Walks `block`'s children recursively (not into replacements) and swaps each converted child
    in with :func:`replace_child`. Returns the number of replacements.
    """
    replaced = 0
    for key, child in list(block._children.items()):
        new = convert(child)
        if new is None:
            replaced += replace_children(child, convert)
        else:
            replace_child(block, key, new)
            replaced += 1
    return replaced


def replace_mxnet_deformable_convolutions(block, **kwargs):
    """Swaps every MXNet ``ModulatedDeformableConvolution`` inside `block` for ours, in place.

    Uses :meth:`DeformableConvolutionV2.from_mxnet`, so Parameters (and loaded data) are kept
    and the model computes what it computed, now trainable on CPU and with any batch size.
    `kwargs` go to the constructor (e.g. ``offset_lr_mult``). Returns the number replaced.
    """
    mxnet_block = mx.gluon.contrib.cnn.ModulatedDeformableConvolution
    return replace_children(
        block, lambda child: DeformableConvolutionV2.from_mxnet(child, **kwargs)
        if isinstance(child, mxnet_block) else None)
