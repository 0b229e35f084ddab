"""Other CPU engines' modulated deformable convolution, contenders of the benchmark's
convolution cases (forward, float32):

* ``openvino``: OpenVINO's ``DeformableConvolution`` (opset 8, with a mask) on its CPU plugin;
* ``onnxruntime``: ONNX ``DeformConv`` (opset 19) on onnxruntime's CPU execution provider
  (onnxruntime 1.25 or later; the model is built with the ``onnx`` package).

Both compute what ``DeformableConvolutionV2`` computes. ONNX defines our border rule (a sample
at (y, x) is used iff -1 < y < H and -1 < x < W, corners outside the image read 0); OpenVINO
follows it with ``bilinear_interpolation_pad=True`` (without it, samples in the bands (-1, 0)
and (H-1, H) read 0). Both take the offsets as (dy, dx) pairs per tap per deformable group and
the masks per tap per group, our layouts, so the case's arrays go in unchanged. Weights and
bias are constants of the compiled model (initializers in ONNX), as a deployed model holds
them; data, offsets and masks are inputs. OpenVINO's operator has no bias: an Add follows it.

Each engine gets the thread count of our operators (:func:`threads`). Before a peer is timed,
its output on the case's inputs is compared with ours (:func:`contender`): a peer that computes
something else is an error, never a row of the table.
"""
import collections
import importlib
import os

import numpy as np

__all__ = ["Peer", "PEERS", "PeerMismatchError", "TOLERANCE", "threads", "available",
           "versions", "note", "contender"]

#: A peer engine: ``label`` (table columns, notes), ``key`` (its contender in a Result's
#: times), ``modules`` (what it imports), ``minimum`` (oldest version of ``modules[-1]`` that
#: runs it) and ``build(inputs, stride, pad, dg)``, which returns a zero-argument function
#: giving the output.
Peer = collections.namedtuple("Peer", "label key modules minimum build")

#: A peer agrees with ours when max |peer - ours| <= TOLERANCE * max |ours|.
TOLERANCE = 1e-4


class PeerMismatchError(RuntimeError):
    """A peer engine's output differs from ours by more than :data:`TOLERANCE`."""


def threads():
    """The thread count our operators use, by MXNet's rule: OMP_NUM_THREADS if set, else every
    processor, at most MXNET_OMP_MAX_THREADS."""
    count = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0] or os.cpu_count())
    cap = os.environ.get("MXNET_OMP_MAX_THREADS")
    return min(count, int(cap)) if cap else count


def _openvino(inputs, stride, pad, dg):
    import openvino as ov
    import openvino.opset8 as ops

    params = [ops.parameter(inputs[name].shape, np.float32) for name in ("data", "offset", "mask")]
    out = ops.deformable_convolution(
        params[0], params[1], ops.constant(inputs["weight"]), strides=[stride] * 2,
        pads_begin=[pad] * 2, pads_end=[pad] * 2, dilations=[1, 1], mask=params[2],
        deformable_group=dg, bilinear_interpolation_pad=True)
    out = ops.add(out, ops.constant(inputs["bias"].reshape(1, -1, 1, 1)))
    compiled = ov.Core().compile_model(ov.Model([out], params), "CPU", {
        "INFERENCE_NUM_THREADS": threads(),
        # Without this hint the CPU plugin computes in bf16 (or f16) where the processor has
        # it: the comparison is float32 against float32.
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",  # one stream: one request uses every thread
        "ENABLE_CPU_PINNING": False,    # as MXNet's and onnxruntime's threads, not pinned
    })
    request = compiled.create_infer_request()
    feed = [inputs[name] for name in ("data", "offset", "mask")]
    # No copies: ours reads MXNet's arrays in place and leaves its output in an NDArray; the
    # output is the request's own buffer, valid until the next call.
    return lambda: request.infer(feed, share_inputs=True, share_outputs=True)[0]


def _onnxruntime(inputs, stride, pad, dg):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    kernel = list(inputs["weight"].shape[2:])
    node = helper.make_node("DeformConv", ["data", "weight", "offset", "bias", "mask"], ["out"],
                            kernel_shape=kernel, pads=[pad] * 4, strides=[stride] * 2,
                            dilations=[1, 1], group=1, offset_group=dg)
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, inputs[name].shape)
         for name in ("data", "offset", "mask")],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(inputs[name], name) for name in ("weight", "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    # onnxruntime's idle pool threads spin by default, which would take the cores from the
    # contender timed next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {name: inputs[name] for name in ("data", "offset", "mask")}
    return lambda: session.run(None, feed)[0]


PEERS = (Peer("OpenVINO", "openvino fwd", ("openvino",), None, _openvino),
         Peer("onnxruntime", "onnxruntime fwd", ("onnx", "onnxruntime"), (1, 25), _onnxruntime))


def _version(text):
    return tuple(int(part) for part in text.split(".")[:2])


def available(ctx):
    """(peers that can run, {label: why not} for the others) on MXNet context ctx."""
    runnable, skipped = [], {}
    for peer in PEERS:
        if ctx.device_type != "cpu":
            skipped[peer.label] = f"skipped: CPU engine, not compared on {ctx}"
            continue
        try:
            module = [importlib.import_module(name) for name in peer.modules][-1]
        except ImportError:
            skipped[peer.label] = (f"skipped: package missing ({' and '.join(peer.modules)}; "
                                   "pip install 'dcnv2-mx[bench]')")
            continue
        if peer.minimum and _version(module.__version__) < peer.minimum:
            skipped[peer.label] = (f"skipped: {peer.modules[-1]} {module.__version__} is older "
                                   f"than {'.'.join(map(str, peer.minimum))}")
            continue
        runnable.append(peer)
    return runnable, skipped


def versions(peers):
    """{label: version} of runnable peers: the release of each one's engine module (OpenVINO's
    build suffix, as in ``2026.4.1-22982-e213a14...``, dropped)."""
    return {peer.label: importlib.import_module(peer.modules[-1]).__version__.split("-")[0]
            for peer in peers}


def note(peers, skipped):
    """One line for the report: the settings, each runnable peer's version, why others are n/a.

    peers, skipped: what :func:`available` returned.
    """
    engines = [f"{label} {version}" for label, version in versions(peers).items()]
    engines += [f"{label} n/a ({why})" for label, why in skipped.items()]
    return (f"peers (forward, float32, {threads()} thread(s) each, as ours): "
            + "; ".join(engines))


def contender(peer, inputs, stride, pad, dg, expected, case_name):
    """The peer's forward on `inputs` as a zero-argument function, once it agrees with ours.

    inputs: float32 arrays data (N, C, H, W), offset (N, 2*dg*kh*kw, Ho, Wo), mask
    (N, dg*kh*kw, Ho, Wo), weight (F, C, kh, kw), bias (F,); expected: our output
    (N, F, Ho, Wo) on them. Raises PeerMismatchError when the peer differs by more than
    TOLERANCE times the largest magnitude of ours.
    """
    run = peer.build(inputs, stride, pad, dg)
    got = np.asarray(run())
    scale = float(np.abs(expected).max())
    error = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.inf
    if not error <= TOLERANCE * scale:
        raise PeerMismatchError(
            f"{peer.label} differs from DeformableConvolutionV2 on case {case_name}: output "
            f"{got.shape}, max |difference| {error:.3g} > {TOLERANCE:g} x max |output| "
            f"{scale:.3g}")
    return run
