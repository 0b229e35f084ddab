"""The demo: does DCNv2 learn deformations? (``python -m dcnv2_mx demo`` and ``viz``).

Task: classify the digits 0-9, drawn in-process from matplotlib's DejaVu Sans Bold outlines and
then randomly rotated (+-35 degrees), scaled (0.35-1 of the image), stretched, sheared, moved and
elastically warped, with pixel noise, on 32x32 images. The same small network is trained three
ways, from the same initial weights: its last two 3x3 convolutions are regular convolutions,
or the Gluon blocks :class:`dcnv2_mx.gluon.DeformableConvolutionV1` (DCNv1) or
:class:`~dcnv2_mx.gluon.DeformableConvolutionV2` (DCNv2) with their defaults. Their offset
convolutions start at zero (and the DCNv2 masks, ``2*sigmoid``, at one), so all three networks
compute the same function at the start and differ only in what the deformable layers learn. The
offset branch trains at 0.1x the learning rate, as in the paper.

The figure shows, as in the paper's Figure 1, where the last two DCNv2 layers sample for one
activation unit of the last layer on test images: its 9 sampling points, and the 9 points of the
previous layer for each of them (81 points), coloured by the product of the modulation masks
along the path. ``viz`` draws the same for any exported model (``HybridBlock.export`` files)
that contains ``DeformableConvolutionV2`` layers, on any image.
"""
import ast
import collections
import json
import os
import time
import warnings

import numpy as np

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from ..gluon import DeformableConvolutionV1, DeformableConvolutionV2

__all__ = ["VARIANTS", "glyph_bitmaps", "render_glyphs", "make_dataset", "build_net", "train",
           "Sampling", "SamplingProbe", "demo_figure", "viz_figure", "load_image", "run_demo"]

#: The three ways the network is trained: name -> what its last two 3x3 layers are.
VARIANTS = collections.OrderedDict(
    [("conv", "regular 3x3 convolutions"), ("dcnv1", "DCNv1 (offsets)"),
     ("dcnv2", "DCNv2 (offsets and modulation)")])
#: The block of each variant's last two 3x3 layers.
_LAYERS = {"conv": nn.Conv2D, "dcnv1": DeformableConvolutionV1, "dcnv2": DeformableConvolutionV2}
IMAGE_SIZE = 32
DIGITS = "0123456789"
#: Prefix of the exported DCNv2 model inside the demo's output directory.
MODEL_PREFIX = "dcnv2_demo"


def glyph_bitmaps(chars=DIGITS, resolution=64):
    """Binary images (len(chars), resolution, resolution) float32 of the glyphs, centred.

    Rendered from matplotlib's bundled DejaVu Sans Bold outlines (even-odd rule, so holes stay
    holes); no font rendering backend is needed.
    """
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path
    from matplotlib.textpath import TextPath

    font = FontProperties(family="DejaVu Sans", weight="bold")
    centres = (np.arange(resolution) + 0.5) / resolution - 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    bitmaps = []
    for char in chars:
        outline = TextPath((0, 0), char, size=1, prop=font)
        low, high = outline.vertices.min(0), outline.vertices.max(0)
        middle, extent = (low + high) / 2, (high - low).max() * 1.15
        points = np.stack([middle[0] + cols.ravel() * extent, middle[1] - rows.ravel() * extent],
                          axis=1)
        inside = np.zeros(len(points), bool)
        for polygon in outline.to_polygons():
            inside ^= Path(polygon).contains_points(points)
        bitmaps.append(inside.reshape(resolution, resolution))
    return np.stack(bitmaps).astype(np.float32)


def render_glyphs(labels, rng, bitmaps, size=IMAGE_SIZE):
    """Randomly deformed glyphs: (len(labels), 1, size, size) float32, glyph ~1 on ~0.

    Each output pixel looks up the glyph bitmap (bilinear, zero outside) at a point obtained by
    undoing a random translation, rotation, shear, anisotropic scale and a smooth elastic
    displacement (a sum of three random plane waves), then Gaussian noise (sigma 0.1) is added.
    """
    n = len(labels)
    angle = rng.uniform(-0.6, 0.6, n)
    scale = rng.uniform(0.35, 1.0, n)
    aspect = np.exp(rng.uniform(-0.25, 0.25, n))
    shear = rng.uniform(-0.3, 0.3, n)
    room = 1 - scale
    shift_x, shift_y = rng.uniform(-room, room), rng.uniform(-room, room)
    waves = rng.normal(0, 2.5, (n, 3, 2, 1, 1))
    phases = rng.uniform(0, 2 * np.pi, (n, 3, 2, 1, 1))
    amplitudes = rng.normal(0, 0.06, (n, 3, 2, 1, 1))

    centres = (np.arange(size) + 0.5) / size * 2 - 1
    grid_y, grid_x = np.meshgrid(centres, centres, indexing="ij")
    wave = waves[:, :, 0] * grid_x + waves[:, :, 1] * grid_y  # (n, 3, size, size)
    elastic = (amplitudes * np.sin(wave[:, :, None] + phases)).sum(axis=1)  # (n, 2, size, size)
    x = grid_x - shift_x[:, None, None] + elastic[:, 0]
    y = grid_y - shift_y[:, None, None] + elastic[:, 1]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = cos * x + sin * y, cos * y - sin * x
    u = (u - shear[:, None, None] * v) / (scale * aspect)[:, None, None]
    v = v / (scale / aspect)[:, None, None]

    res = bitmaps.shape[1]
    src_x, src_y = (u + 1) / 2 * res - 0.5, (v + 1) / 2 * res - 0.5
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    lx, ly = src_x - x0, src_y - y0
    images = np.zeros((n, size, size))
    glyph = labels[:, None, None]
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                           (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        on_bitmap = (yy >= 0) & (yy < res) & (xx >= 0) & (xx < res)
        images += weight * on_bitmap * bitmaps[glyph, np.clip(yy, 0, res - 1),
                                               np.clip(xx, 0, res - 1)]
    images += rng.normal(0, 0.1, images.shape)
    return images[:, None].astype(np.float32)


def make_dataset(train_size, test_size, seed):
    """(x_train, y_train, x_test, y_test): images (n, 1, 32, 32) float32, labels (n,) int."""
    rng = np.random.default_rng(seed)
    bitmaps = glyph_bitmaps()
    y_train = rng.integers(0, len(DIGITS), train_size)
    y_test = rng.integers(0, len(DIGITS), test_size)
    return (render_glyphs(y_train, rng, bitmaps), y_train,
            render_glyphs(y_test, rng, bitmaps), y_test)


def build_net(variant, width=32):
    """The demo network; variant in VARIANTS. Input (N, 1, 32, 32), output logits (N, 10).

    conv 3x3 (16) - relu - max-pool 2 - conv 3x3 (width) - relu - max-pool 2 - two 3x3 layers
    (width; ``nn.Conv2D``, ``dcnv2_mx.gluon.DeformableConvolutionV1`` or ``...V2``) each
    followed by relu - global average pool - dense (10). The deformable blocks' main weight is
    their first randomly initialised Parameter (the offset branch starts at zero), so it gets
    the initial values of the Conv2D weight it replaces.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    net = nn.HybridSequential(prefix=f"{variant}_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1, in_channels=1, activation="relu"),
                nn.MaxPool2D(2),
                nn.Conv2D(width, 3, padding=1, in_channels=16, activation="relu"),
                nn.MaxPool2D(2))
        for _ in range(2):
            net.add(_LAYERS[variant](width, 3, padding=1, in_channels=width),
                    nn.Activation("relu"))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(len(DIGITS), in_units=width))
    return net


def _batches(count, batch_size, rng=None):
    """Index arrays of full batches (shuffled when rng is given); the last one is padded by
    wrapping around, so every batch has the same shape and the hybridized graph is reused."""
    order = rng.permutation(count) if rng is not None else np.arange(count)
    padded = np.resize(order, -(-count // batch_size) * batch_size)
    return padded.reshape(-1, batch_size)


def _accuracy(net, images, labels, batch_size, ctx):
    correct = 0
    for k, index in enumerate(_batches(len(images), batch_size)):
        keep = min(batch_size, len(images) - k * batch_size)
        logits = net(mx.nd.array(images[index], ctx=ctx))
        correct += int((logits.argmax(axis=1).asnumpy()[:keep] == labels[index[:keep]]).sum())
    return correct / len(images)


def train(variant, data, epochs, ctx, seed, batch_size=64, learning_rate=3e-3, progress=None):
    """Trains build_net(variant) on data = make_dataset(...) with Adam.

    progress, if given, is called after each step with (loss, test accuracy or None).
    Returns (net, history) with history lists "train_loss" (mean per epoch), "test_acc" and
    "epoch_seconds" (training time per epoch, evaluation excluded).
    """
    x_train, y_train, x_test, y_test = data
    mx.random.seed(seed)
    net = build_net(variant)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": learning_rate})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(seed)
    history = {"train_loss": [], "test_acc": [], "epoch_seconds": []}
    accuracy = None
    for _ in range(epochs):
        start, losses = time.perf_counter(), []
        for index in _batches(len(x_train), batch_size, rng):
            images = mx.nd.array(x_train[index], ctx=ctx)
            labels = mx.nd.array(y_train[index], ctx=ctx)
            with autograd.record():
                loss = loss_fn(net(images), labels)
            loss.backward()
            trainer.step(batch_size)
            losses.append(float(loss.mean().asscalar()))
            if progress:
                progress(losses[-1], accuracy)
        history["epoch_seconds"].append(time.perf_counter() - start)
        history["train_loss"].append(float(np.mean(losses)))
        accuracy = _accuracy(net, x_test, y_test, batch_size, ctx)
        history["test_acc"].append(accuracy)
    return net, history


#: Where one activation unit of a DCNv2 layer samples: unit (y, x), points (P, 2) as (y, x) and
#: masks (P,), all in the pixel coordinates of the input image.
Sampling = collections.namedtuple("Sampling", "unit points masks")


def _attr_tuple(attrs, key, default):
    return tuple(ast.literal_eval(attrs[key])) if key in attrs else default


class SamplingProbe:
    """Reads the sampling points of the last DCNv2 layer (and of the DCNv2 layer feeding it, when
    its output has the size of that layer's input) from an exported model.

    symbol_file, params_file: the files ``HybridBlock.export`` writes; the input must be named
    ``data``. Only deformable group 0 is shown when a layer has several.
    """

    def __init__(self, symbol_file, params_file, ctx=None):
        self.ctx = ctx or mx.cpu()
        symbol = mx.sym.load(symbol_file)
        nodes = json.loads(symbol.tojson())["nodes"]
        layers = [i for i, node in enumerate(nodes)
                  if node["op"] == "_contrib_DeformableConvolutionV2"]
        if not layers:
            raise ValueError(f"{symbol_file} has no DeformableConvolutionV2 layer")
        internals = symbol.get_internals()
        # Output k of internals is output number j of some node: map (node name, j) -> k.
        position, seen = {}, collections.Counter()
        for k in range(len(internals.list_outputs())):
            name = internals[k].name
            position[(name, seen[name])] = k
            seen[name] += 1

        def output_of(entry):
            node_id, index = entry[0], entry[1]
            return internals[position[(nodes[node_id]["name"], index)]]

        self.layers = []
        outputs = []
        for node_id in layers[-2:]:
            node = nodes[node_id]
            attrs = node.get("attrs", {})
            self.layers.append(dict(
                kernel=_attr_tuple(attrs, "kernel", None),
                stride=_attr_tuple(attrs, "stride", (1, 1)),
                pad=_attr_tuple(attrs, "pad", (0, 0)),
                dilate=_attr_tuple(attrs, "dilate", (1, 1))))
            outputs += [output_of(node["inputs"][0]), output_of(node["inputs"][1]),
                        output_of(node["inputs"][2]), output_of([node_id, 0])]
        self.channels = self._input_channels(nodes, params_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.block = gluon.SymbolBlock(mx.sym.Group(outputs), mx.sym.var("data"))
            self.block.collect_params().load(params_file, ctx=self.ctx, ignore_extra=True)

    @staticmethod
    def _input_channels(nodes, params_file):
        """Channels the model's first convolution expects (3 when that cannot be read)."""
        params = mx.nd.load(params_file)
        for node in nodes:
            if node["op"] == "Convolution" and nodes[node["inputs"][0][0]]["name"] == "data":
                weight = params.get("arg:" + nodes[node["inputs"][1][0]]["name"])
                if weight is not None:
                    return weight.shape[1] * int(node.get("attrs", {}).get("num_group", 1))
        return 3

    def _taps(self, layer, offset, mask, y, x):
        """The layer's sampling points (9, 2) in its input map, and masks (9,), at unit (y, x)."""
        kh, kw = layer["kernel"]
        tap_i, tap_j = np.divmod(np.arange(kh * kw), kw)
        dy, dx = offset[0:2 * kh * kw:2, y, x], offset[1:2 * kh * kw:2, y, x]
        py = y * layer["stride"][0] - layer["pad"][0] + tap_i * layer["dilate"][0] + dy
        px = x * layer["stride"][1] - layer["pad"][1] + tap_j * layer["dilate"][1] + dx
        return np.stack([py, px], axis=1), mask[:kh * kw, y, x]

    def locate(self, images, units=1):
        """Samplings of images (n, channels, H, W) float32: for each image a list of `units`
        Samplings, for the most active units of the last DCNv2 layer (L2 norm over channels),
        each a quarter of that layer's output size (at least 2 pixels) away from the ones
        before it."""
        outs = [o.asnumpy() for o in self.block(mx.nd.array(images, ctx=self.ctx))]
        result = outs[-1]
        samplings = []
        for n in range(len(images)):
            energy = np.sqrt((result[n] ** 2).sum(axis=0))
            spacing = max(2, min(energy.shape) // 4)
            chosen = []
            for flat in np.argsort(energy, axis=None)[::-1]:
                yx = np.array(np.unravel_index(int(flat), energy.shape))
                if all(np.abs(yx - other).max() >= spacing for other in chosen):
                    chosen.append(yx)
                if len(chosen) == units:
                    break
            samplings.append([self._sampling(outs, n, y, x, images.shape[2:])
                              for y, x in chosen])
        return samplings

    def _sampling(self, outs, n, y, x, image_shape):
        """The Sampling of output unit (y, x) of the last DCNv2 layer on image n."""
        last = self.layers[-1]
        data, offset, mask = outs[-4:-1]
        points, masks = self._taps(last, offset[n], mask[n], y, x)
        unit = _receptive_centre(last, np.array([y, x]))
        # Compose with the previous DCNv2 layer when the last one reads its output directly
        # (same spatial size: only element-wise layers in between).
        source_shape = data.shape[2:]
        if len(self.layers) == 2 and outs[3].shape[2:] == data.shape[2:]:
            first, (height, width) = self.layers[0], outs[3].shape[2:]
            nested_points, nested_masks = [], []
            for (py, px), m in zip(points, masks):
                cy = int(np.clip(np.rint(py), 0, height - 1))
                cx = int(np.clip(np.rint(px), 0, width - 1))
                inner, inner_masks = self._taps(first, outs[1][n], outs[2][n], cy, cx)
                nested_points.append(inner + np.array([py - cy, px - cx])
                                     * np.array(first["stride"]))
                nested_masks.append(m * inner_masks)
            points, masks = np.concatenate(nested_points), np.concatenate(nested_masks)
            unit = _receptive_centre(first, unit)
            source_shape = outs[0].shape[2:]
        scale = np.array(image_shape) / np.array(source_shape)
        return Sampling((unit + 0.5) * scale - 0.5, (points + 0.5) * scale - 0.5, masks)


def _receptive_centre(layer, position):
    """Centre, in a layer's input map, of the kernel window of output position (y, x)."""
    return (position * np.array(layer["stride"]) - np.array(layer["pad"])
            + (np.array(layer["kernel"]) - 1) / 2 * np.array(layer["dilate"]))


def _draw_sampling(ax, image, sampling, vmax):
    """One image with the sampling points coloured by mask and the unit as a red cross."""
    ax.imshow(image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0], cmap="gray",
              interpolation="nearest")
    ax.scatter(sampling.points[:, 1], sampling.points[:, 0], c=sampling.masks, cmap="viridis",
               vmin=0, vmax=vmax, s=9, edgecolors="none")
    ax.plot(sampling.unit[1], sampling.unit[0], "r+", ms=10, mew=2)
    ax.set_xlim(-0.5, image.shape[2] - 0.5)
    ax.set_ylim(image.shape[1] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.collections[-1]


def _colour_limit(samplings):
    return max(1.0, max(float(s.masks.max()) for s in samplings))


def demo_figure(path, images, samplings, histories, titles=None):
    """Sampling points on test images (left) next to test accuracy and training loss (right).

    images (n, C, H, W) with n a multiple of 3; samplings from SamplingProbe.locate; histories
    maps variant -> train() history. Writes a PNG to path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(images) // 3, 1)
    fig = plt.figure(figsize=(12, 1.0 + 2.6 * rows), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[3, 2.2])
    image_axes = left.subplots(rows, 3, squeeze=False)
    vmax = _colour_limit(samplings)
    for k, (ax, image, sampling) in enumerate(zip(image_axes.flat, images, samplings)):
        dots = _draw_sampling(ax, image, sampling, vmax)
        if titles:
            ax.set_title(titles[k], fontsize=8)
    bar = left.colorbar(dots, ax=image_axes, shrink=0.8)
    bar.set_label("modulation (product of the two masks)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    accuracy, loss = right.subplots(2, 1, sharex=True)
    for variant, history in histories.items():
        epochs = np.arange(1, len(history["test_acc"]) + 1)
        accuracy.plot(epochs, history["test_acc"], "o-", ms=3, label=VARIANTS[variant])
        loss.plot(epochs, history["train_loss"], "o-", ms=3, label=VARIANTS[variant])
    accuracy.set_ylabel("test accuracy", fontsize=8)
    accuracy.legend(fontsize=7)
    loss.set_ylabel("training loss", fontsize=8)
    loss.set_xlabel("epoch", fontsize=8)
    for ax in (accuracy, loss):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Last two DCNv2 layers: 81 sampling points of the most active unit (+), "
                 "coloured by modulation", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def viz_figure(path, image, samplings):
    """The image once per sampling (one activation unit each), points coloured by mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samplings), figsize=(3.6 * len(samplings) + 1, 4),
                             squeeze=False, layout="constrained")
    vmax = _colour_limit(samplings)
    for ax, sampling in zip(axes[0], samplings):
        dots = _draw_sampling(ax, image, sampling, vmax)
    fig.colorbar(dots, ax=list(axes[0]), label="modulation (mask product along the path)",
                 shrink=0.8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_image(path, channels, size):
    """An image file as (channels, h, w) float32 in [0, 1], its longer side resized to size.

    path None: matplotlib's sample photograph ``grace_hopper.jpg``. channels 1: grayscale.
    """
    from matplotlib import cbook
    from PIL import Image

    picture = Image.open(path or cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    picture = picture.convert("L" if channels == 1 else "RGB")
    ratio = size / max(picture.size)
    picture = picture.resize((max(1, round(picture.size[0] * ratio)),
                              max(1, round(picture.size[1] * ratio))), Image.BILINEAR)
    pixels = np.asarray(picture, np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def run_demo(epochs=8, ctx=None, seed=0, out="dcnv2-demo", train_size=8192, test_size=1024,
             show_progress=True):
    """Trains the three variants, exports the DCNv2 model and writes out/demo.png.

    Returns (histories, figure path): histories maps variant -> train() history, plus "params".
    """
    from tqdm import tqdm

    ctx = ctx or mx.cpu()
    os.makedirs(out, exist_ok=True)
    data = make_dataset(train_size, test_size, seed)
    histories = collections.OrderedDict()
    steps = len(_batches(train_size, 64))
    for variant in VARIANTS:
        with tqdm(total=epochs * steps, desc=f"{variant:>5}", disable=not show_progress,
                  leave=True, dynamic_ncols=True) as bar:
            def progress(loss, accuracy):
                bar.set_postfix_str(f"loss {loss:.3f}" + (
                    "" if accuracy is None else f", test acc {accuracy:.3f}"))
                bar.update()
            net, history = train(variant, data, epochs, ctx, seed, progress=progress)
            bar.set_postfix_str(f"test acc {history['test_acc'][-1]:.3f}")
        history["params"] = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
        histories[variant] = history
    prefix = os.path.join(out, MODEL_PREFIX)
    net.export(prefix)
    probe = SamplingProbe(prefix + "-symbol.json", prefix + "-0000.params", ctx)
    x_test, y_test = data[2], data[3]
    shown = np.arange(min(6, len(x_test)) // 3 * 3)
    predictions = net(mx.nd.array(x_test[shown], ctx=ctx)).argmax(axis=1).asnumpy()
    figure = os.path.join(out, "demo.png")
    demo_figure(figure, x_test[shown], [s[0] for s in probe.locate(x_test[shown])], histories,
                [f"digit {y_test[i]}, predicted {int(p)}" for i, p in zip(shown, predictions)])
    return histories, figure
