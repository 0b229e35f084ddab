"""Tests of the GluonCV integration (gluoncv 0.10.5.post0, offline: nothing pretrained): ResNet
conversion (names, pretrained files, unchanged output), a hybridized training step of a DCNv2
Faster R-CNN R-50 FPN with modulated RoI pooling, a C4 model with more than 64 RoIs, and
CenterNet DCNv2 on our block (parameter files of GluonCV's model, training step)."""
import gluoncv
import mxnet as mx
import numpy as np
import pytest
from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform
from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import FasterRCNN
from gluoncv.model_zoo.resnetv1b import resnet18_v1b
from gluoncv.nn import feature as gluoncv_feature
from mxnet import autograd, gluon

import dcnv2_mx.gluoncv as dcn_cv
from dcnv2_mx.gluon import DeformableConvolutionV2


def count_dcn(block):
    found = isinstance(block, DeformableConvolutionV2)
    return found + sum(count_dcn(child) for child in block._children.values())


def image(rng, batch=1, size=128):
    return mx.nd.array(rng.uniform(-1, 1, (batch, 3, size, size)))


def assert_trained(params, names):
    """Every named zero-initialised parameter moved away from zero."""
    for name in names:
        assert np.abs(params[name].data().asnumpy()).max() > 0, name


# ---------------------------------------------------------------------------------------------
# ResNet conversion


def test_convert_resnet_keeps_names_weights_and_output(rng, tmp_path):
    """layer2-4 conv2 become DCNv2 under their old names: a file of the plain network loads,
    the output is unchanged, and train_patterns-style regexes select the offsets."""
    plain = resnet18_v1b(pretrained=False)
    plain.initialize(mx.init.Xavier())
    x = image(rng, 2, 64)
    expected = plain(x).asnumpy()
    path = str(tmp_path / "resnet18.params")
    plain.save_parameters(path)

    net = resnet18_v1b(pretrained=False)
    names = set(net.collect_params())
    assert dcn_cv.convert_resnet(net) == 6
    assert dcn_cv.convert_resnet(net) == 0  # already converted
    assert isinstance(net.layer2[0].conv2, DeformableConvolutionV2)
    assert not isinstance(net.layer1[0].conv2, DeformableConvolutionV2)
    new = set(net.collect_params()) - names
    assert names < set(net.collect_params()) and len(new) == 12
    assert set(net.collect_params(".*layers(2|3|4)_conv")) >= new
    net.initialize()
    net.load_parameters(path, allow_missing=True)
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_deformable_backbone_restores_gluoncv():
    original = gluoncv_feature._parse_network
    with pytest.raises(RuntimeError):
        with dcn_cv.deformable_backbone():
            assert gluoncv_feature._parse_network is not original
            raise RuntimeError
    assert gluoncv_feature._parse_network is original


def test_get_model_refuses_a_model_without_resnet_stages():
    with pytest.raises(ValueError, match="no GluonCV ResNet stage"):
        dcn_cv.get_model("mobilenet0.25", pretrained=False)


# ---------------------------------------------------------------------------------------------
# Faster R-CNN


def rcnn_batch(net, multi_stage):
    """One 128x128 image with two boxes, through GluonCV's training transform (RPN targets)."""
    rng = np.random.RandomState(0)
    img = mx.nd.array(rng.randint(0, 255, (128, 128, 3)), dtype="uint8")
    label = np.array([[10, 20, 60, 90, 1], [50, 40, 120, 110, 2]], dtype="float32")
    transform = FasterRCNNDefaultTrainTransform(128, 128, net=net, ashape=net.ashape,
                                                multi_stage=multi_stage)
    x, _, *rpn = transform(img, label)

    def flat(target, width):  # per-level (h, w, A*width) targets -> (1, sum h*w*A, width)
        levels = target if isinstance(target, (list, tuple)) else [target]
        return mx.nd.concat(*[mx.nd.array(t).reshape((-1, width)) for t in levels],
                            dim=0).expand_dims(0)

    return dict(x=x.expand_dims(0), gt_box=mx.nd.array(label[None, :, :4]),
                gt_label=mx.nd.array(label[None, :, 4:]),
                rpn_cls=flat(rpn[0], 1).squeeze(-1), rpn_box=flat(rpn[1], 4),
                rpn_mask=flat(rpn[2], 4))


def rcnn_training_step(net, batch, trainer):
    """Forward, the loss of GluonCV's Faster R-CNN recipe, backward, trainer step.
    Returns the loss and the RCNN class predictions (1, num_sample, classes + 1)."""
    with autograd.record():
        (cls_pred, box_pred, _, _, _, rpn_score, rpn_box, _, cls_target, box_target, box_mask,
         _) = net(batch["x"], batch["gt_box"], batch["gt_label"])
        rpn_valid = batch["rpn_cls"] >= 0
        num_anchors, num_rois = rpn_valid.sum(), (cls_target >= 0).sum()
        loss = (gluon.loss.SigmoidBCELoss()(rpn_score.squeeze(-1), batch["rpn_cls"],
                                            rpn_valid).sum() / num_anchors
                + gluon.loss.HuberLoss(rho=1 / 9.)(rpn_box, batch["rpn_box"],
                                                   batch["rpn_mask"]).sum() / num_anchors
                + gluon.loss.SoftmaxCELoss()(cls_pred, cls_target,
                                             cls_target.expand_dims(-1) >= 0).sum() / num_rois
                + gluon.loss.HuberLoss()(box_pred, box_target, box_mask).sum() / num_rois)
    loss.backward()
    trainer.step(1)
    return loss.asscalar(), cls_pred


def test_faster_rcnn_fpn_r50_dcnv2_training_step():
    """Faster R-CNN R-50 FPN, DCNv2 in layer2-4 and modulated RoI pooling: one hybridized
    (static_alloc) training step on CPU updates the offset branches and the RoI head."""
    net = dcn_cv.get_model("faster_rcnn_fpn_resnet50_v1b_coco", pretrained_base=False)
    assert isinstance(net.modulated_roi_pooling.offset_head, gluon.nn.HybridSequential)
    train_params = net.collect_train_params()  # GluonCV's train_patterns
    offsets = [n for n in net.collect_params() if n.endswith("offset_weight")]
    assert len(offsets) == 4 + 6 + 3 and set(offsets) <= set(train_params)
    head_out = [n for n in net.collect_params() if "dcnroi_offset_dense2" in n]
    assert len(head_out) == 2 and set(head_out) <= set(train_params)
    net.initialize()
    batch = rcnn_batch(net, multi_stage=True)
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(train_params, "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss, cls_pred = rcnn_training_step(net, batch, trainer)
    assert np.isfinite(loss)
    assert cls_pred.shape == (1, 512, 81)
    assert_trained(net.collect_params(), offsets + head_out)


def c4_resnet18_faster_rcnn(num_sample):
    """A small C4 Faster R-CNN: resnet18 layer1-3 features, layer4 runs on every RoI."""
    base = resnet18_v1b(pretrained=False, use_global_stats=True)
    features, top_features = gluon.nn.HybridSequential(), gluon.nn.HybridSequential()
    features.add(base.conv1, base.bn1, base.relu, base.maxpool, base.layer1, base.layer2,
                 base.layer3)
    top_features.add(base.layer4)
    return FasterRCNN(features, top_features, classes=("a", "b", "c"), roi_size=(4, 4),
                      strides=16, rpn_channel=64, scales=(2, 4, 8), alloc_size=(32, 32),
                      rpn_train_pre_nms=500, rpn_train_post_nms=200, rpn_test_pre_nms=500,
                      rpn_test_post_nms=num_sample, num_sample=num_sample, max_num_gt=4,
                      train_patterns=".*dense|.*rpn|.*layers(2|3|4)_conv")


def test_c4_with_more_than_64_rois():
    """C4: layer4 DCNv2 runs with the 72 RoIs as its batch (MXNet's operator refuses a batch
    above 64 that 64 does not divide), pooled by the modulated RoI head; training and
    inference."""
    net = c4_resnet18_faster_rcnn(num_sample=72)
    assert dcn_cv.convert_resnet(net) == 6
    dcn_cv.use_modulated_roi_pooling(net, hidden_units=32)
    assert net.modulated_roi_pooling.offset_head[2].weight.shape[0] == 3 * 4 * 4
    net.initialize()
    batch = rcnn_batch(net, multi_stage=False)
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_train_params(), "sgd", {"learning_rate": 0.1})
    loss, cls_pred = rcnn_training_step(net, batch, trainer)
    assert np.isfinite(loss) and cls_pred.shape == (1, 72, 4)
    params = net.collect_params()
    assert_trained(params, [n for n in params if n.endswith("offset_weight") or "dense2" in n])
    net.hybridize(static_alloc=True)  # GluonCV: inference takes other inputs than training
    ids, scores, boxes = net(batch["x"])
    assert boxes.shape[-1] == 4 and np.isfinite(scores.asnumpy()).all()


# ---------------------------------------------------------------------------------------------
# CenterNet


def test_center_net_loads_gluoncv_dcnv2_parameters(rng, tmp_path):
    """A file written by GluonCV's CenterNet (MXNet's ModulatedDeformableConvolution) loads
    into the model on our block, which computes the same outputs. Offsets of a few pixels:
    larger ones make the untrained network amplify float32 rounding."""
    name = "center_net_resnet18_v1b_dcnv2_coco"
    reference = gluoncv.model_zoo.get_model(name, pretrained_base=False)
    reference.initialize()
    for param in reference.collect_params(".*offset.*").values():
        param.set_data(mx.nd.array(rng.normal(0, 0.002, param.shape)))
    x = image(rng, 2)
    expected_features = reference.base_network(x).asnumpy()
    expected = [a.asnumpy() for a in reference(x)]
    path = str(tmp_path / "center_net.params")
    reference.save_parameters(path)

    net = dcn_cv.get_model(name, stages=(), pretrained_base=False)
    assert count_dcn(net) == 3 and count_dcn(reference) == 0
    net.load_parameters(path)
    features = net.base_network(x).asnumpy()
    np.testing.assert_allclose(features, expected_features, rtol=1e-4,
                               atol=1e-6 * np.abs(expected_features).max())
    for got, want in zip(net(x), expected):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=1e-4)


def test_center_net_resnet18_dcnv2_training_step(rng):
    """CenterNet ResNet-18 DCNv2 on our block: a hybridized training step (batch 3) on CPU."""
    net = dcn_cv.get_model("center_net_resnet18_v1b_dcnv2_coco", stages=(),
                           pretrained_base=False)
    net.hybridize(static_alloc=True)
    params = net.collect_params()
    trainer = gluon.Trainer(params, "adam", {"learning_rate": 1e-3})
    x = image(rng, 3)
    heat_target = mx.nd.zeros((3, 80, 32, 32))
    heat_target[:, 3, 10, 12] = 1
    with autograd.record():
        heatmap, wh, offset = net(x)
        loss = (gluoncv.loss.HeatmapFocalLoss(from_logits=True)(heatmap, heat_target)
                + wh.abs().mean() + offset.abs().mean())
    loss.backward()
    trainer.step(3)
    assert heatmap.shape == (3, 80, 32, 32) and np.isfinite(loss.asnumpy()).all()
    assert_trained(params, [n for n in params if n.endswith("offset_weight")])
