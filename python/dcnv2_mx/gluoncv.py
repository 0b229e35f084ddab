"""GluonCV integration: DCNv2 backbones, modulated deformable RoI pooling, CenterNet.

The paper's detectors (Deformable ConvNets v2, arXiv 1811.11168) from GluonCV's model zoo
(``gluoncv==0.10.5.post0``)::

    import dcnv2_mx.gluoncv as dcn_cv
    net = dcn_cv.get_model("faster_rcnn_fpn_resnet50_v1b_coco", pretrained_base=True)

gives a Faster R-CNN whose ResNet ``layer2``-``layer4`` 3x3 convolutions (the paper's conv3-conv5)
are :class:`~dcnv2_mx.gluon.DeformableConvolutionV2` and whose RoIAlign is the paper's
modulated deformable RoI pooling head. The pieces also work on their own:

* :func:`convert_resnet` — DCNv2 in chosen stages of a ResNetV1b, or of a model holding its
  stages as blocks (C4 Faster/Mask R-CNN, CenterNet);
* :func:`deformable_backbone` — the same for models that trace their backbone into a symbol
  while being built (every FPN model);
* :func:`use_modulated_roi_pooling` — the RoI head in a Faster/Mask R-CNN, FPN or C4;
* :func:`~dcnv2_mx.gluon.replace_mxnet_deformable_convolutions` (via :func:`get_model`) —
  GluonCV's CenterNet ``*_dcnv2`` models on our block, trainable on CPU.

Converted convolutions keep the prefix and parameter names of the Conv2D they replace, so
pretrained weights load and GluonCV's ``train_patterns`` (e.g. ``.*layers(2|3|4)_conv``) match
the new offset parameters too.
"""
import contextlib
import re
import threading
import types

import mxnet as mx
from gluoncv import model_zoo
from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import FasterRCNN
from gluoncv.model_zoo.resnetv1b import BasicBlockV1b, BottleneckV1b
from gluoncv.nn import feature as gluoncv_feature
from mxnet.gluon import HybridBlock, nn

from .gluon import (DeformableConvolutionV2, ModulatedDeformableRoIPooling, replace_child,
                    replace_mxnet_deformable_convolutions)

__all__ = ["DEFAULT_STAGES", "convert_resnet", "deformable_backbone", "use_modulated_roi_pooling",
           "get_model"]

#: ResNet stages with DCNv2 in the paper: conv3-conv5, GluonCV's ``layer2``-``layer4``.
DEFAULT_STAGES = (2, 3, 4)

# GluonCV names the stage built by ResNetV1b._make_layer(i) "<net prefix>layers<i>_".
_STAGE_PREFIX = re.compile(r"layers(\d+)_$")
_patch_lock = threading.Lock()


def _stages(block, stages, seen):
    """Yields the ResNetV1b stage blocks numbered in `stages` found under `block`, once each."""
    for child in block._children.values():
        if id(child) in seen:
            continue
        seen.add(id(child))
        match = _STAGE_PREFIX.search(child.prefix)
        if match and int(match.group(1)) in stages:
            yield child
        else:
            yield from _stages(child, stages, seen)


def convert_resnet(net, stages=DEFAULT_STAGES, **dcn_kwargs):
    """Makes the 3x3 ``conv2`` of every residual unit in `stages` a DCNv2, in place.

    `net` is a GluonCV ResNetV1b (v1b/v1c/v1d, any depth) or any block holding its stages, e.g.
    a C4 Faster/Mask R-CNN (``features`` and ``top_features``) or a CenterNet. Stage i is
    GluonCV's ``layer<i>`` (the paper's conv<i+1>). Each Conv2D becomes
    :meth:`DeformableConvolutionV2.from_conv2d` of itself: same prefix and Parameters (loaded
    pretrained weights stay), new zero-initialised ``offset_weight``/``offset_bias``; with the
    default ``mask_activation='2sigmoid'`` the network computes exactly what it computed until
    the offsets train. `dcn_kwargs` go to the block (e.g. ``offset_lr_mult``).

    Convert before ``hybridize()`` and before anything traces the network: FPN models trace
    their backbone while being built, see :func:`deformable_backbone`. Returns the number of
    convolutions converted (0 when none of the stages is found or all are converted already).
    """
    converted = 0
    for stage in _stages(net, set(stages), set()):
        for unit in stage._children.values():
            if isinstance(unit, (BottleneckV1b, BasicBlockV1b)) and \
                    isinstance(unit.conv2, nn.Conv2D):
                replace_child(unit, "conv2",
                              DeformableConvolutionV2.from_conv2d(unit.conv2, **dcn_kwargs))
                converted += 1
    return converted


@contextlib.contextmanager
def deformable_backbone(stages=DEFAULT_STAGES, **dcn_kwargs):
    """Within the block, GluonCV feature extractors trace DCNv2 backbones.

    GluonCV's ``FPNFeatureExpander`` (every FPN Faster/Mask R-CNN, also custom ones) turns its
    backbone into a symbol while the model is built, after which blocks cannot be swapped. In
    this context each HybridBlock backbone is passed through :func:`convert_resnet` first::

        with deformable_backbone() as converted:
            net = gluoncv.model_zoo.get_model("mask_rcnn_fpn_resnet50_v1b_coco")
        assert sum(converted)

    Yields a list that receives the number of convolutions converted per traced backbone. Not
    re-entrant; other threads building GluonCV feature extractors wait for the block to end.
    """
    converted = []
    original = gluoncv_feature._parse_network

    def parse_converted(network, *args, **kwargs):
        if isinstance(network, HybridBlock):
            converted.append(convert_resnet(network, stages, **dcn_kwargs))
        return original(network, *args, **kwargs)

    with _patch_lock:
        gluoncv_feature._parse_network = parse_converted
        try:
            yield converted
        finally:
            gluoncv_feature._parse_network = original


def _fpn_levels(F, rois, min_level, max_level, canonical_scale, eps):
    """FPN level of each RoI (R,): ``floor(4 + log2(sqrt(area) / canonical_scale))``, clipped.

    Lin et al. 2017, eq. 1, with GluonCV's +1 pixel box size convention.
    """
    _, x1, y1, x2, y2 = F.split(rois, axis=-1, num_outputs=5)
    size = F.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
    level = F.floor(4 + F.log2(size / canonical_scale + eps))
    return F.squeeze(F.clip(level, min_level, max_level))


def _modulated_roi_feats(self, F, features, rpn_rois, roi_size, strides, roi_mode="align",
                         roi_canonical_scale=224.0, sampling_ratio=2, eps=1e-6):
    """FasterRCNN._pyramid_roi_feats with modulated deformable RoI pooling (see
    :func:`use_modulated_roi_pooling`); the RoIAlign arguments are not used."""
    head = self.modulated_roi_pooling
    if isinstance(strides, (int, float)):  # C4: one feature map
        scales, level_of_roi = [1. / strides], None
    else:
        # As GluonCV: the stride-64 level (P6) only feeds the RPN.
        max_stage = self._max_stage - 1 if self._max_stage > 5 else self._max_stage
        scales = [1. / s for s in strides[:max_stage - self._min_stage + 1]]
        level_of_roi = _fpn_levels(F, rpn_rois, self._min_stage, max_stage,
                                   roi_canonical_scale, eps)

    def merged(pool):
        """Each RoI pooled from its own level: all levels pooled, the others zeroed."""
        pooled = [pool(feature, scale) for feature, scale in zip(features, scales)]
        if level_of_roi is None:
            return pooled[0]
        return F.ElementWiseSum(*[
            F.where(level_of_roi == self._min_stage + i, p, F.zeros_like(p))
            for i, p in enumerate(pooled)])

    plain = merged(lambda feature, scale: head.pool_plain(F, feature, rpn_rois, scale))
    trans, mask = head.offsets_and_masks(F, plain)
    return merged(lambda feature, scale: head.pool_modulated(F, feature, rpn_rois, scale,
                                                             trans, mask))


def _feature_channels(net):
    """Channels of the (first) feature map that the R-CNN pools RoIs from."""
    feature = net.features(mx.sym.var("data"))[0]  # FPN: P2, whose channels all levels share
    _, shapes, _ = feature.infer_shape(data=(1, 3, 256, 256))
    return shapes[0][1]


def use_modulated_roi_pooling(net, part_size=None, **head_kwargs):
    """Replaces RoIAlign in a GluonCV Faster or Mask R-CNN by the DCNv2 RoI head, in place.

    Adds ``net.modulated_roi_pooling``, a :class:`~dcnv2_mx.gluon.ModulatedDeformableRoIPooling`
    with ``pooled_size`` = the model's ``roi_size`` and, by default, the paper's 7 x 7 offset grid
    (``part_size=min(7, roi_size)``). Its parameters are named ``<net prefix>dcnroi_offset_dense*``
    and match the ``.*dense`` train pattern. FPN models: each RoI is pooled from its FPN level
    and the offset layers are shared across levels. C4 models: the single feature map. Mask
    R-CNN's mask branch pools through the same head.

    `head_kwargs` go to the head (``hidden_units``, ``trans_std``, ``mask_activation``,
    ``offset_lr_mult``, ...). Call before ``hybridize()``. Returns `net`.
    """
    if not isinstance(net, FasterRCNN):
        raise TypeError(f"use_modulated_roi_pooling needs a GluonCV FasterRCNN or MaskRCNN, got "
                        f"{type(net).__name__}")
    pooled_h, pooled_w = net._roi_size
    if pooled_h != pooled_w:
        raise ValueError(f"use_modulated_roi_pooling needs a square roi_size, got {net._roi_size}")
    with net.name_scope():
        net.modulated_roi_pooling = ModulatedDeformableRoIPooling(
            _feature_channels(net), pooled_size=pooled_h,
            part_size=part_size or min(7, pooled_h), prefix="dcnroi_", **head_kwargs)
    net._pyramid_roi_feats = types.MethodType(_modulated_roi_feats, net)
    # GluonCV's single-level (C4) forward pools inline with RoIAlign and calls
    # _pyramid_roi_feats only when num_stages > 1. Nothing else reads num_stages after
    # construction, so raising it routes C4 models through the replacement, which tells the
    # cases apart by `strides`.
    net.num_stages = max(net.num_stages, 2)
    return net


def get_model(name, stages=DEFAULT_STAGES, modulated_roi_pooling=True, dcn_kwargs=None,
              roi_kwargs=None, **kwargs):
    """A GluonCV model-zoo model with DCNv2: ``gluoncv.model_zoo.get_model(name, **kwargs)``
    built with DCNv2 in the ResNet `stages`, and:

    * for Faster/Mask R-CNN, when `modulated_roi_pooling`, the DCNv2 RoI head
      (:func:`use_modulated_roi_pooling`);
    * every MXNet ``ModulatedDeformableConvolution`` replaced by ours, Parameters kept — so
      GluonCV's CenterNet ``*_dcnv2`` models train on CPU. For GluonCV's CenterNet models as
      published (DCN in the upsampling head only) pass ``stages=()``.

    `dcn_kwargs` go to every :class:`~dcnv2_mx.gluon.DeformableConvolutionV2` (e.g.
    ``offset_lr_mult``), `roi_kwargs` to the RoI head. Weights of ``pretrained=True`` /
    ``pretrained_base=True`` load before the conversion and are kept (downloads need network
    access; pass False offline). Raises ValueError when `stages` is non-empty and no ResNet
    stage was found.
    """
    dcn_kwargs = dcn_kwargs or {}
    with deformable_backbone(stages, **dcn_kwargs) as traced:
        net = model_zoo.get_model(name, **kwargs)
    converted = sum(traced) + convert_resnet(net, stages, **dcn_kwargs)
    if stages and not converted:
        raise ValueError(f"get_model: {name} has no GluonCV ResNet stage {tuple(stages)} to "
                         "convert (pass stages=() to convert none)")
    replace_mxnet_deformable_convolutions(net, **dcn_kwargs)
    if modulated_roi_pooling and isinstance(net, FasterRCNN):
        use_modulated_roi_pooling(net, **(roi_kwargs or {}))
    return net
