"""Whole-network benchmark (``bench --model``): GluonCV's ResNet-50 v1b, plain and with DCNv2.

Contenders, each ``gluoncv.model_zoo.get_model('resnet50_v1b', pretrained=False)`` initialised
(Xavier) and hybridized with ``static_alloc`` and ``static_shape``:

* ``plain``: the network as built;
* ``offset_branch``: the floor of any DCNv2 implementation: the DCNv2 layers below with MXNet's
  plain Convolution in place of the deformable one, so that only the offset-and-mask branch
  (convolution, slicing, mask activation) is added to the plain network. The offsets and masks
  reach the output through one element of each, times 0 (one broadcast add per layer), which
  keeps the branch in the graph and in the backward pass;
* ``ours``: the 13 3x3 ``conv2`` of layer2-layer4 (the paper's conv3-conv5) made
  :class:`~dcnv2_mx.gluon.DeformableConvolutionV2` by :func:`dcnv2_mx.gluoncv.convert_resnet`,
  each with its offset-and-mask convolution;
* ``builtin``: the same 13 layers as MXNet's ``gluon.contrib.cnn.ModulatedDeformableConvolution``
  (same geometry, offset convolution and 2*sigmoid masks), inference only: MXNet's operator has
  no CPU backward;
* ``plain_again``: a second plain network, built last. Two identical networks in one process
  can differ by several percent (where their memory lies, what else runs); its ratio to
  ``plain`` shows that spread for the run, the resolution of the other ratios.

Offsets: the offset convolutions keep their zero weights and get biases ~ N(0, 1), so every
layer samples at fractional offsets ~ N(0, 1) pixels (four corners each) with masks
2*sigmoid(N(0, 1)), whatever the scale of an untrained network's activations (offsets computed
from them could leave the image, where sampling costs nothing).

Cases: inference on (batch, 3, H, W) input, and a training step: forward and backward of the
sum of the outputs (BatchNorm on batch statistics, every parameter's gradient; no optimizer).
Timed as the convolution cases (dcnv2_mx.tools.benchmark): in one process, alternating between
the contenders on each repetition, medians, each run ended by ``mx.nd.waitall()``.
"""
import collections

import numpy as np

import mxnet as mx
from mxnet import autograd

from dcnv2_mx.gluon import DeformableConvolutionV2, replace_children

from .benchmark import Result, _bars, _ms, _pyplot, _ratio, _save, _time_contenders

__all__ = ["ModelCase", "MODEL_CASES", "QUICK_MODEL_CASES", "NETWORKS", "build_networks", "run",
           "format_results", "plot_results"]

#: A network case: ``mode`` "infer" or "train" on input (batch, 3, height, width).
ModelCase = collections.namedtuple("ModelCase", "name mode batch height width")

#: ImageNet inference and a training step at batch 2; inference at a detector's input size.
MODEL_CASES = (
    ModelCase("infer_224", "infer", 2, 224, 224),
    ModelCase("train_224", "train", 2, 224, 224),
    ModelCase("infer_800x1333", "infer", 1, 800, 1333),
)
#: Tiny input for tests and smoke runs.
QUICK_MODEL_CASES = (
    ModelCase("infer_tiny", "infer", 1, 64, 64),
    ModelCase("train_tiny", "train", 1, 64, 64),
)

#: Contenders in timing order; "builtin" runs inference cases only.
NETWORKS = ("plain", "offset_branch", "ours", "builtin", "plain_again")
#: The networks without DCNv2 layers.
_PLAIN = ("plain", "plain_again")


#: Offset and mask-logit biases of every DCNv2 layer (see above).
_OFFSET_BIAS = mx.init.Normal(1.0)


def _same_layer(block_class, block):
    """A `block_class` block with the geometry, prefix and offset biases of our DCNv2 `block`."""
    conv = block._deform_conv
    return block_class(conv["num_filter"], conv["kernel"], conv["stride"], conv["pad"],
                       conv["dilate"], conv["num_group"], conv["num_deformable_group"],
                       use_bias=not conv["no_bias"], offset_bias_initializer=_OFFSET_BIAS,
                       prefix=block.prefix)


class _OffsetBranchOnly(DeformableConvolutionV2):
    """The "offset_branch" contender's layer: the offset-and-mask branch of a DCNv2 layer, then
    the plain convolution plus 0 * (one offset + one mask of each image)."""

    def _deform(self, F, x, offset, weight, bias):
        conv = {k: v for k, v in self._deform_conv.items()
                if k not in ("num_deformable_group", "im2col_step")}
        out = F.Convolution(data=x, weight=weight, bias=bias, **conv)
        offsets, mask = self._offsets_and_mask(F, offset)
        # The first offset and the first mask of each image, (N, 1, 1, 1) each.
        first = [F.slice(v, begin=(None, 0, 0, 0), end=(None, 1, 1, 1)) for v in (offsets, mask)]
        return F.broadcast_add(out, (first[0] + first[1]) * 0)


def build_networks(ctx, seed=0):
    """{name: network} for NETWORKS: ResNet-50 v1b plain, with the offset branch alone, with
    our DCNv2, with MXNet's and plain again, initialised on ctx and hybridized (shapes are
    inferred at the first call)."""
    from gluoncv import model_zoo

    from dcnv2_mx.gluoncv import convert_resnet

    swaps = {"builtin": mx.gluon.contrib.cnn.ModulatedDeformableConvolution,
             "offset_branch": _OffsetBranchOnly}
    nets = {}
    for name in NETWORKS:
        net = model_zoo.get_model("resnet50_v1b", pretrained=False)
        if name not in _PLAIN:
            convert_resnet(net, offset_bias_initializer=_OFFSET_BIAS)
        if name in swaps:
            # convert_resnet picks the layers; each is then swapped for the contender's block.
            replace_children(net, lambda child: _same_layer(swaps[name], child) if isinstance(
                child, DeformableConvolutionV2) else None)
        mx.random.seed(seed)
        net.initialize(mx.init.Xavier(), ctx=ctx)
        net.hybridize(static_alloc=True, static_shape=True)
        nets[name] = net
    return nets


def _training_step(net, x):
    def step():
        with autograd.record():
            loss = net(x).sum()
        loss.backward()
    return step


def _contenders(case, nets, ctx, rng):
    """Zero-argument functions, one per network that runs the case, on a fixed random input."""
    x = mx.nd.array(rng.normal(size=(case.batch, 3, case.height, case.width)), ctx=ctx)
    if case.mode == "infer":
        return {name: (lambda net=net: net(x)) for name, net in nets.items()}
    return {name: _training_step(net, x) for name, net in nets.items() if name != "builtin"}


def run(cases=MODEL_CASES, repeat=5, warmup=2, ctx=None, seed=0):
    """Builds the networks and yields one Result (times: median ms per network; memory: {})
    per case, as it completes. repeat: timed runs per network; warmup: untimed runs first (the
    first call of a hybridized network builds its graph)."""
    ctx = ctx or mx.cpu()
    nets = build_networks(ctx, seed)
    rng = np.random.default_rng(seed)
    for case in cases:
        yield Result(case, _time_contenders(_contenders(case, nets, ctx, rng), repeat, warmup),
                     {})


def format_results(results):
    """Text table: time ratios to the plain network and median ms of each network."""
    from .table import format_table

    rows = [[r.case.name, f"{r.case.mode} {r.case.batch}x3x{r.case.height}x{r.case.width}",
             _ratio(r.times["ours"], r.times["plain"]),
             _ratio(r.times["offset_branch"], r.times["plain"]),
             _ratio(r.times.get("builtin"), r.times["plain"]),
             _ratio(r.times["plain_again"], r.times["plain"]),
             *(_ms(r.times.get(name)) for name in NETWORKS)] for r in results]
    return format_table(["case", "input", "ours / plain", "offset branch / plain",
                         "builtin / plain", "plain again / plain",
                         *(f"{name} ms" for name in NETWORKS)], rows)


def plot_results(results, path, title=None):
    """Bar chart of the DCNv2 networks' times relative to the plain one (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))  # wide enough for the machine summary as title
    _bars(ax, results, (("builtin DCNv2 / plain", "builtin", "plain", "#bbbbbb"),
                        ("ours / plain", "ours", "plain", "#1f77b4"),
                        ("offset branch alone / plain", "offset_branch", "plain", "#9ecae1")),
          "time relative to the plain ResNet-50 v1b")
    _save(fig, path, title or "dcnv2_mx ResNet-50 v1b benchmark")
