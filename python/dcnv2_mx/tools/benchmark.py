"""Benchmark suite: DCNv2 against a regular convolution and MXNet's built-in operators.

Every case times its contenders side by side in one process, alternating between them on each
repetition (so that a slow spell of the machine hits all of them alike), and keeps the median.
Each run ends with ``mx.nd.waitall()``: MXNet executes asynchronously.

Convolution cases (3x3 kernel, pad 1; offsets ~ N(0, 2), mask = sigmoid(N(0, 1))):

* ``conv``: ``mx.nd.Convolution`` of the same shape, forward and forward+backward (data,
  weight and bias gradients);
* ``ours``: ``DeformableConvolutionV2``, forward and forward+backward (all five gradients);
* ``builtin``: MXNet's ``ModulatedDeformableConvolution``, forward only (it has no CPU
  backward). Its batch must be at most ``im2col_step`` (64) or a multiple of it; every case's
  batch is at most 64;
* peers (``run(peers=...)``, CPU only): other engines' deformable convolution, forward only,
  on the same inputs, each checked against ours before it is timed
  (dcnv2_mx.tools.bench_peers: OpenVINO, onnxruntime).

The PS-RoI pooling case times ``ModulatedDeformablePSROIPooling`` (with a mask) against MXNet's
``DeformablePSROIPooling`` (no mask), forward and forward+backward.

Peak memory (CPU, Linux): writing ``5`` to ``/proc/self/clear_refs`` resets the process's
resident-set high-water mark (``VmHWM``); the suite resets it right before one run of a
contender and reads it right after, so ``VmHWM - VmRSS before`` is the memory that run needed
at its peak on top of what already existed: outputs, gradients and temporaries (inputs and
gradient buffers are allocated beforehand). glibc would keep some freed blocks mapped and serve
later requests from them, hiding their pages from the mark, so memory is measured in a child
process (spawned, one for the whole suite) that fixes glibc's mmap threshold at 128 KiB
(``mallopt``) before its first allocation, which returns every large block to the system on
free. The timed runs stay in the parent with glibc's usual behaviour: with that threshold every
call would fault in fresh pages for its outputs, which no long-running program does and which
would add the same milliseconds to every contender. Elsewhere the memory columns read n/a.
"""
import collections
import ctypes
import datetime
import gc
import multiprocessing
import os
import platform
import statistics
import time

import numpy as np

import mxnet as mx
from mxnet import autograd

from . import bench_peers

__all__ = ["Case", "CASES", "QUICK_CASES", "PoolCase", "POOL_CASE", "QUICK_POOL_CASE",
           "Result", "run", "machine_summary", "format_results", "plot_results"]

#: A convolution case: input (batch, channels, height, width), filters, deformable groups and
#: stride of a 3x3, pad-1 convolution.
Case = collections.namedtuple("Case", "name batch channels height width filters dg stride")

#: The cases of the performance targets: ResNet stages at a detector's input, 64-channel shapes,
#: and a detector's feature map whose planes are a power of two (64 x 64) floats apart.
CASES = (
    Case("res_c3", 1, 128, 100, 136, 128, 1, 1),
    Case("res_c4", 1, 256, 50, 68, 256, 1, 1),
    Case("res_c5", 1, 512, 25, 34, 512, 1, 1),
    Case("small", 2, 64, 56, 56, 64, 1, 1),
    Case("batch8", 8, 64, 32, 32, 64, 1, 1),
    Case("dg4", 2, 64, 32, 32, 64, 4, 1),
    Case("strided", 2, 64, 56, 56, 64, 1, 2),
    Case("detector", 4, 256, 64, 64, 256, 1, 1),
)
#: Tiny cases for tests and smoke runs.
QUICK_CASES = (
    Case("tiny", 2, 8, 12, 12, 8, 1, 1),
    Case("tiny_dg2_s2", 2, 8, 12, 12, 8, 2, 2),
)

#: A PS-RoI pooling case: feature map (channels, height, width) at 1/16 of the image, RoIs,
#: pooled size and samples per bin side; one class, group size 1, as in the paper's RoI head.
PoolCase = collections.namedtuple("PoolCase", "name channels height width rois pooled samples")
POOL_CASE = PoolCase("psroi", 256, 50, 68, 512, 7, 2)
QUICK_POOL_CASE = PoolCase("psroi_tiny", 8, 10, 12, 16, 3, 2)

#: The timings of one case: median milliseconds and peak MiB (None where not measured) per
#: contender such as "ours fwd".
Result = collections.namedtuple("Result", "case times memory")

_MMAP_THRESHOLD = -3  # glibc's M_MMAP_THRESHOLD

#: Calls of every contender before its memory is measured: the first calls create JIT code and
#: MXNet's cached resources (its temporary space, kept in several copies), which later calls reuse.
_MEMORY_WARMUP = 8


def _shape_text(case):
    if isinstance(case, PoolCase):
        return (f"{case.channels}x{case.height}x{case.width}, {case.rois} RoIs, "
                f"P{case.pooled} S{case.samples}")
    text = f"{case.batch}x{case.channels}x{case.height}x{case.width}->{case.filters}"
    return text + (f" dg{case.dg}" if case.dg > 1 else "") + (
        f" s{case.stride}" if case.stride > 1 else "")


def _arrays(ctx, **values):
    return {k: mx.nd.array(v, ctx=ctx, dtype="float32") for k, v in values.items()}


def _forward_backward(op, arrays, grads, head):
    """A function that runs op forward and backward, writing the gradients of the named inputs."""
    for name in grads:
        arrays[name].attach_grad()

    def run():
        with autograd.record():
            out = op(**arrays)
        out.backward(head)
    return run


def _conv_contenders(case, ctx, rng, peers=()):
    """Zero-argument functions, one per contender, on fixed random inputs of the case; peers:
    bench_peers.Peer engines to add (each raises PeerMismatchError if it differs from ours)."""
    n, c, h, w, f = case.batch, case.channels, case.height, case.width, case.filters
    ho, wo = (h - 1) // case.stride + 1, (w - 1) // case.stride + 1
    taps = case.dg * 9
    values = dict(data=rng.normal(size=(n, c, h, w)),
                  weight=rng.normal(scale=(c * 9) ** -0.5, size=(f, c, 3, 3)),
                  bias=rng.normal(size=(f,)))
    dcn_values = dict(values, offset=rng.normal(scale=2.0, size=(n, 2 * taps, ho, wo)),
                      mask=1 / (1 + np.exp(-rng.normal(size=(n, taps, ho, wo)))))
    params = dict(kernel=(3, 3), pad=(1, 1), stride=(case.stride,) * 2, num_filter=f)
    dcn_params = dict(params, num_deformable_group=case.dg)
    head = mx.nd.array(rng.normal(size=(n, f, ho, wo)), ctx=ctx)

    def conv(**a):
        return mx.nd.Convolution(a["data"], a["weight"], a["bias"], **params)

    def ours(**a):
        return mx.nd.contrib.DeformableConvolutionV2(**a, **dcn_params)

    def builtin(**a):
        return mx.nd.contrib.ModulatedDeformableConvolution(
            a["data"], a["offset"], a["mask"], a["weight"], a["bias"], **dcn_params)

    conv_in, dcn_in = _arrays(ctx, **values), _arrays(ctx, **dcn_values)
    contenders = {
        "conv fwd": lambda: conv(**conv_in),
        "ours fwd": lambda: ours(**dcn_in),
        "builtin fwd": lambda: builtin(**dcn_in),
        "conv fwd+bwd": _forward_backward(conv, _arrays(ctx, **values), list(values), head),
        "ours fwd+bwd": _forward_backward(ours, _arrays(ctx, **dcn_values), list(dcn_values),
                                          head),
    }
    if peers:
        expected = ours(**dcn_in).asnumpy()
        peer_in = {k: v.asnumpy() for k, v in dcn_in.items()}  # float32, as ours reads them
        for peer in peers:
            contenders[peer.key] = bench_peers.contender(peer, peer_in, case.stride, 1, case.dg,
                                                         expected, case.name)
    return contenders


def _pool_contenders(case, ctx, rng):
    """Zero-argument functions for the PS-RoI pooling case (one class, group size 1)."""
    scale, p = 1.0 / 16, case.pooled
    image_h, image_w = case.height / scale, case.width / scale
    x1, y1 = rng.uniform(0, image_w * 0.8, case.rois), rng.uniform(0, image_h * 0.8, case.rois)
    rois = np.stack([np.zeros(case.rois), x1, y1,
                     np.minimum(x1 + rng.uniform(32, 400, case.rois), image_w - 1),
                     np.minimum(y1 + rng.uniform(32, 400, case.rois), image_h - 1)], axis=1)
    values = dict(data=rng.normal(size=(1, case.channels, case.height, case.width)), rois=rois,
                  trans=rng.normal(size=(case.rois, 2, p, p)))
    mask = 1 / (1 + np.exp(-rng.normal(size=(case.rois, 1, p, p))))
    params = dict(spatial_scale=scale, output_dim=case.channels, group_size=1, pooled_size=p,
                  part_size=p, sample_per_part=case.samples, trans_std=0.1)
    head = mx.nd.array(rng.normal(size=(case.rois, case.channels, p, p)), ctx=ctx)

    def builtin(**a):
        return mx.nd.contrib.DeformablePSROIPooling(a["data"], a["rois"], a["trans"], **params)

    def ours(**a):
        return mx.nd.contrib.ModulatedDeformablePSROIPooling(**a, **params)

    ours_values = dict(values, mask=mask)
    builtin_in, ours_in = _arrays(ctx, **values), _arrays(ctx, **ours_values)
    return {
        "builtin fwd": lambda: builtin(**builtin_in),
        "ours fwd": lambda: ours(**ours_in),
        "builtin fwd+bwd": _forward_backward(builtin, _arrays(ctx, **values),
                                             ["data", "trans"], head),
        "ours fwd+bwd": _forward_backward(ours, _arrays(ctx, **ours_values),
                                          ["data", "trans", "mask"], head),
    }


def _timed(fn):
    start = time.perf_counter()
    fn()
    mx.nd.waitall()
    return (time.perf_counter() - start) * 1e3


class _PeakRss:
    """Peak resident memory of one call on Linux (see the module docstring); else unavailable."""

    def __init__(self):
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        self.available = os.access("/proc/self/clear_refs", os.W_OK) and mallopt is not None
        if self.available:
            mallopt(_MMAP_THRESHOLD, 128 * 1024)

    @staticmethod
    def _status_mib(key):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(key)

    def measure(self, fn):
        """MiB that fn needed at its peak above the memory in use before it, or None."""
        if not self.available:
            return None
        mx.nd.waitall()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = self._status_mib("VmRSS")
        fn()
        mx.nd.waitall()
        return self._status_mib("VmHWM") - before


def _time_contenders(contenders, repeat, warmup):
    times = {name: [] for name in contenders}
    for rep in range(warmup + repeat):
        for name, fn in contenders.items():
            elapsed = _timed(fn)
            if rep >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def _peak_memory_child(cases, pool_case, seed):
    """Runs in the memory child: {case name: {contender: peak MiB}}, or {} if unavailable."""
    peak = _PeakRss()  # before any input or output of the cases is allocated
    if not peak.available:
        return {}
    import dcnv2_mx  # noqa: F401  (loads the operators into this process)

    rng = np.random.default_rng(seed)
    makers = [(case, _conv_contenders) for case in cases]
    if pool_case is not None:
        makers.append((pool_case, _pool_contenders))
    memory = {}
    for case, make in makers:
        contenders = make(case, mx.cpu(), rng)
        for _ in range(_MEMORY_WARMUP):
            for fn in contenders.values():
                _timed(fn)
        memory[case.name] = {name: peak.measure(fn) for name, fn in contenders.items()}
    return memory


def _peak_memory(cases, pool_case, seed):
    """Peak MiB per case and contender, measured in a spawned child process (see above)."""
    with multiprocessing.get_context("spawn").Pool(1) as child:
        return child.apply(_peak_memory_child, (tuple(cases), pool_case, seed))


def run(cases=CASES, pool_case=POOL_CASE, repeat=10, warmup=2, ctx=None, seed=0, peers=()):
    """Runs the suite; yields one Result per case (the pooling case last), as it completes.

    cases: Case tuples; pool_case: a PoolCase or None. repeat: timed runs per contender;
    warmup: untimed runs first. peers: bench_peers.Peer engines timed in every convolution case
    (``bench_peers.available(ctx)[0]`` for all that can run); raises
    bench_peers.PeerMismatchError, before timing the case, if one differs from ours.
    """
    ctx = ctx or mx.cpu()
    rng = np.random.default_rng(seed)
    memory = _peak_memory(cases, pool_case, seed) if ctx.device_type == "cpu" else {}
    for case in cases:
        times = _time_contenders(_conv_contenders(case, ctx, rng, peers), repeat, warmup)
        yield Result(case, times, memory.get(case.name, {}))
    if pool_case is not None:
        times = _time_contenders(_pool_contenders(pool_case, ctx, rng), repeat, warmup)
        yield Result(pool_case, times, memory.get(pool_case.name, {}))


def machine_summary(ctx=None):
    """One line naming the processor, the thread setting, MXNet and the date."""
    ctx = ctx or mx.cpu()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = os.environ.get("OMP_NUM_THREADS", f"unset, {os.cpu_count()} cores")
    return (f"{cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, context {ctx}, "
            f"MXNet {mx.__version__}, float32, {datetime.date.today().isoformat()}")


def _ms(value):
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mib(value):
    return "n/a" if value is None else f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _peer_ratio(times, peer):
    """Our forward time over the peer's; n/a when the peer did not run (see the notes)."""
    return _ratio(times["ours fwd"], times[peer.key]) if peer.key in times else "n/a"


def format_results(results):
    """Two text tables (convolution cases, pooling case) with ratios, ms and peak MiB; a peer
    engine that did not run reads n/a (bench_peers.available says why)."""
    from .table import format_table

    conv_rows, pool_rows = [], []
    for r in results:
        t, m = r.times, r.memory
        if isinstance(r.case, PoolCase):
            pool_rows.append([
                r.case.name, _shape_text(r.case), _ratio(t["ours fwd"], t["builtin fwd"]),
                _ratio(t["ours fwd+bwd"], t["builtin fwd+bwd"]),
                _ms(t["builtin fwd"]), _ms(t["ours fwd"]), _ms(t["builtin fwd+bwd"]),
                _ms(t["ours fwd+bwd"]),
                f"{_mib(m.get('builtin fwd+bwd'))} / {_mib(m.get('ours fwd+bwd'))}"])
            continue
        conv_rows.append([
            r.case.name, _shape_text(r.case),
            _ratio(t["ours fwd"], t["conv fwd"]),
            *(_peer_ratio(t, peer) for peer in bench_peers.PEERS),
            _ratio(t["builtin fwd"], t["ours fwd"]),
            _ratio(t["ours fwd+bwd"], t["conv fwd+bwd"]),
            _ms(t["conv fwd"]), _ms(t["ours fwd"]), _ms(t["builtin fwd"]),
            *(_ms(t[peer.key]) if peer.key in t else "n/a" for peer in bench_peers.PEERS),
            _ms(t["conv fwd+bwd"]), _ms(t["ours fwd+bwd"]),
            f"{_mib(m.get('conv fwd+bwd'))} / {_mib(m.get('ours fwd+bwd'))}"])
    tables = []
    if conv_rows:
        tables.append(format_table(
            ["case", "N x C x H x W -> F", "fwd vs conv",
             *(f"ours / {peer.label}" for peer in bench_peers.PEERS),
             "builtin vs ours", "f+b vs conv", "conv fwd ms", "ours fwd ms", "builtin fwd ms",
             *(f"{peer.label} fwd ms" for peer in bench_peers.PEERS),
             "conv f+b ms", "ours f+b ms", "peak MiB f+b conv / ours"], conv_rows))
    if pool_rows:
        tables.append(format_table(
            ["case", "shape", "fwd vs builtin", "f+b vs builtin", "builtin fwd ms",
             "ours fwd ms", "builtin f+b ms", "ours f+b ms", "peak MiB f+b builtin / ours"],
            pool_rows))
    return "\n\n".join(tables)


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, title):
    """Titles the figure, writes it to path and closes it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


#: Bar colours of the peer engines' series.
_PEER_COLORS = {"OpenVINO": "#2ca02c", "onnxruntime": "#9467bd"}


def plot_results(results, path, title=None):
    """Bar chart of the time ratios (log scale) with the targets of issue 6, written to path."""
    plt = _pyplot()
    conv = [r for r in results if isinstance(r.case, Case)]
    pool = [r for r in results if isinstance(r.case, PoolCase)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw=dict(
        width_ratios=[max(len(conv), 1), max(len(pool), 1) + 0.6]))
    series = (("builtin DCNv2 fwd / conv fwd", "builtin fwd", "conv fwd", "#bbbbbb"),
              *((f"{peer.label} fwd / conv fwd", peer.key, "conv fwd", _PEER_COLORS[peer.label])
                for peer in bench_peers.PEERS),
              ("ours fwd / conv fwd", "ours fwd", "conv fwd", "#1f77b4"),
              ("ours fwd+bwd / conv fwd+bwd", "ours fwd+bwd", "conv fwd+bwd", "#ff7f0e"))
    _bars(axes[0], conv, series, "time relative to mx.nd.Convolution")
    for level, label in ((1.5, "fwd target 1.5x"), (2.0, "fwd+bwd target 2x")):
        axes[0].axhline(level, ls="--", lw=0.8, color="gray")
        axes[0].text(-0.45, level * 1.03, label, fontsize=7, color="gray")
    _bars(axes[1], pool, (("ours fwd / builtin fwd", "ours fwd", "builtin fwd", "#1f77b4"),
                          ("ours f+b / builtin f+b", "ours fwd+bwd", "builtin fwd+bwd",
                           "#ff7f0e")), "time relative to DeformablePSROIPooling")
    _save(fig, path, title or "dcnv2_mx benchmark")


def _bars(ax, results, series, ylabel):
    """One group of bars per result, one bar per series (label, numerator contender,
    denominator contender, colour) where the result has both; a series that no result has (a
    peer engine that did not run) gets no slot."""
    from matplotlib.ticker import FormatStrFormatter

    def ran(r, num, den):
        return num in r.times and den in r.times

    if results:
        series = [s for s in series if any(ran(r, *s[1:3]) for r in results)]
    width = 0.8 / len(series)
    ratios = [1.0]
    for i, (label, num, den, color) in enumerate(series):
        shown = [k for k, r in enumerate(results) if ran(r, num, den)]
        xs = [k + (i - (len(series) - 1) / 2) * width for k in shown]
        heights = [results[k].times[num] / results[k].times[den] for k in shown]
        ax.bar(xs, heights, width, label=label, color=color)
        ratios += heights
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(min(ratios) / 1.4, max(ratios) * 1.4)
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="both", labelsize=7)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([r.case.name for r in results], fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    if not results:
        ax.text(0.5, 0.5, "not run", ha="center", transform=ax.transAxes)
