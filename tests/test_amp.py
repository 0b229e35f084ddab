"""Mixed precision with mx.contrib.amp: the operators on AMP's lists (dcnv2_mx.amp), casts placed
as intended by amp.convert_symbol / convert_model / convert_hybrid_block for the float16 (GPU)
and bfloat16 (CPU) targets, converted models run against float32, amp.init in a fresh process,
and AMP training steps on a GPU (skipped without one)."""
import json
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet.contrib import amp

from conftest import run_python
from dcnv2_mx import amp as dcn_amp
from dcnv2_mx.gluon import DeformableConvolutionV2

BFLOAT16 = amp.amp.bfloat16
CONVS = ["_contrib_DeformableConvolutionV2", "_contrib_DeformableConvolutionV1"]
POOLING = "_contrib_ModulatedDeformablePSROIPooling"
HAS_POOLING = hasattr(mx.sym.contrib, "ModulatedDeformablePSROIPooling")


def runs(fn):
    """Whether fn() runs without an MXNetError (a capability of this MXNet build and CPU)."""
    try:
        fn()
        return True
    except mx.base.MXNetError:
        return False


def _bfloat16_convolution():
    x = mx.nd.amp_cast(mx.nd.ones((1, 8, 4, 4)), dtype=BFLOAT16)
    w = mx.nd.amp_cast(mx.nd.ones((8, 8, 3, 3)), dtype=BFLOAT16)
    mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True).wait_to_read()


def _float16_on_cpu():
    h = dict(dtype="float16")
    mx.nd.contrib.DeformableConvolutionV2(
        mx.nd.ones((1, 2, 4, 4), **h), mx.nd.zeros((1, 18, 4, 4), **h), mx.nd.ones((1, 9, 4, 4), **h),
        mx.nd.ones((2, 2, 3, 3), **h), mx.nd.zeros(2, **h), kernel=(3, 3), pad=(1, 1),
        num_filter=2).wait_to_read()


#: MXNet's bfloat16 Convolution needs oneDNN's AVX-512 kernels.
needs_bfloat16_convolution = pytest.mark.skipif(
    not runs(_bfloat16_convolution),
    reason="MXNet's bfloat16 Convolution does not run on this CPU (oneDNN needs AVX-512)")
#: float16 on CPU: computed in float32, stored in float16.
needs_float16_on_cpu = pytest.mark.skipif(
    not runs(_float16_on_cpu), reason="this build of the operators has no float16 on CPU")


def network(with_pooling=HAS_POOLING):
    """conv0 -> offset conv -> DCNv2 'dcn2' -> DCNv1 'dcn1' (offsets from a conv) -> 1x1 'head'
    [-> PS-RoI pooling 'pool' on rois]: every kind of input our operators can get."""
    data = mx.sym.var("data")
    feat = mx.sym.Convolution(data, kernel=(3, 3), pad=(1, 1), num_filter=8, name="conv0")
    off_mask = mx.sym.Convolution(feat, kernel=(3, 3), pad=(1, 1), num_filter=27, name="off2")
    out = mx.sym.contrib.DeformableConvolutionV2(
        data=feat, offset=mx.sym.slice_axis(off_mask, axis=1, begin=0, end=18),
        mask=mx.sym.sigmoid(mx.sym.slice_axis(off_mask, axis=1, begin=18, end=27)),
        kernel=(3, 3), pad=(1, 1), num_filter=8, name="dcn2")
    offset = mx.sym.Convolution(out, kernel=(3, 3), pad=(1, 1), num_filter=18, name="off1")
    out = mx.sym.contrib.DeformableConvolutionV1(data=out, offset=offset, kernel=(3, 3),
                                                 pad=(1, 1), num_filter=8, name="dcn1")
    out = mx.sym.Convolution(out, kernel=(1, 1), num_filter=4, name="head")
    if with_pooling:
        out = mx.sym.contrib.ModulatedDeformablePSROIPooling(
            data=out, rois=mx.sym.var("rois"), no_trans=True, spatial_scale=0.5, output_dim=4,
            group_size=1, pooled_size=2, name="pool")
    return out


def inputs(sym, rng, data_shape=(2, 8, 8, 8)):
    """Random float32 arguments of `sym` (data, rois and parameters), keyed by name."""
    shapes = {"data": data_shape, "rois": (3, 5)}
    arg_shapes = sym.infer_shape(**{k: v for k, v in shapes.items() if k in sym.list_inputs()})[0]
    args = {name: mx.nd.array(rng.normal(0, 0.3, shape))
            for name, shape in zip(sym.list_arguments(), arg_shapes)}
    if "rois" in args:
        args["rois"] = mx.nd.array([[0, 1, 1, 12, 10], [1, 0, 3, 15, 15], [0, 4, 2, 9, 14]])
    return args


def dtypes_around(sym, node, arg_types):
    """(dtypes of the inputs of `node`, dtype of its output) after type inference of the
    converted `sym` (AMP's casts included: tojson drops them unless told not to)."""
    internals = sym.get_internals()
    types = dict(zip(internals.list_outputs(), internals.infer_type(**arg_types)[1]))
    graph = json.loads(sym.tojson(remove_amp_cast=False))["nodes"]
    entry = next(n for n in graph if n["name"] == node)
    names = [graph[i]["name"] + ("" if graph[i]["op"] == "null" else "_output")
             for i, _, _ in entry["inputs"]]
    return [np.dtype(types[n]) for n in names], np.dtype(types[node + "_output"])


def float32_types(sym):
    return {name: np.float32 for name in sym.list_arguments()}


F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def test_registered_on_the_lists_once():
    dcn_amp.register()  # again: no duplicates
    lp16, fp32 = amp.list_lp16_ops("float16"), amp.list_fp32_ops("float16")
    bf16_fp32 = amp.list_fp32_ops(BFLOAT16)
    for op in CONVS:
        assert lp16.count(op) == 1 and op not in fp32 and bf16_fp32.count(op) == 1
        assert op not in amp.list_lp16_ops(BFLOAT16)
    if HAS_POOLING:
        assert fp32.count(POOLING) == 1 and bf16_fp32.count(POOLING) == 1
        assert POOLING not in lp16


@pytest.mark.parametrize("target", ["float16", "bfloat16"])
def test_conversion_fails_without_the_registration(target):
    """What users got before: AMP leaves our operators between low-precision neighbours."""
    listed = set(CONVS + [POOLING])
    dtype = BFLOAT16 if target == "bfloat16" else target
    with pytest.raises(mx.base.MXNetError, match="DeformableConvolutionV2"):
        amp.convert_symbol(
            network(), target_dtype=target,
            target_dtype_ops=[o for o in amp.list_lp16_ops(dtype) if o not in listed],
            fp32_ops=[o for o in amp.list_fp32_ops(dtype) if o not in listed])


@pytest.mark.parametrize("target, convolution, ours", [
    ("float16", F16, F16), ("bfloat16", np.dtype(BFLOAT16), F32)])
def test_casts_land_where_intended(target, convolution, ours):
    """float16 target: both convolutions take and give float16 (weights and biases cast too).
    bfloat16 target (CPU): MXNet's convolutions in bfloat16, ours in float32 between them.
    Either way the PS-RoI pooling runs in float32 (its RoIs stay exact)."""
    converted = amp.convert_symbol(network(), target_dtype=target)
    types = float32_types(converted)
    for node, inputs in (("dcn2", 5), ("dcn1", 4)):
        assert dtypes_around(converted, node, types) == ([ours] * inputs, ours)
    if HAS_POOLING:
        assert dtypes_around(converted, "pool", types) == ([F32, F32], F32)
    for node in ("conv0", "off2", "off1", "head"):
        assert dtypes_around(converted, node, types)[1] == convolution


def run_symbol(sym, args, aux=None):
    return sym.bind(mx.cpu(), args, aux_states=aux or {}).forward()[0].astype("float32").asnumpy()


@needs_bfloat16_convolution
def test_bfloat16_convert_model_runs_and_matches_float32(rng):
    sym = network()
    args = inputs(sym, rng)
    expected = run_symbol(sym, args)
    data = {k: args[k] for k in ("data", "rois") if k in args}
    params = {k: v for k, v in args.items() if k not in data}
    converted, params, aux = amp.convert_model(sym, params, {}, target_dtype="bfloat16")
    got = run_symbol(converted, dict(params, **data), aux)
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


@needs_float16_on_cpu
def test_float16_graph_runs_on_cpu_and_matches_float32(rng):
    """A float16 graph of our operators alone (MXNet's own Convolution has no float16 on CPU):
    AMP casts every input, the operators compute in float32 and store float16."""
    data, offset = mx.sym.var("data"), mx.sym.var("offset")
    out = mx.sym.contrib.DeformableConvolutionV2(
        data=data, offset=offset, mask=mx.sym.sigmoid(mx.sym.var("mask_logit")), kernel=(3, 3),
        pad=(1, 1), num_filter=4, name="dcn2")
    out = mx.sym.contrib.DeformableConvolutionV1(data=out, offset=offset, kernel=(3, 3),
                                                 pad=(1, 1), num_filter=4, name="dcn1")
    shapes = dict(data=(2, 4, 6, 6), offset=(2, 18, 6, 6), mask_logit=(2, 9, 6, 6))
    args = {n: mx.nd.array(rng.normal(0, 1, s))
            for n, s in zip(out.list_arguments(), out.infer_shape(**shapes)[0])}
    expected = run_symbol(out, args)
    converted = amp.convert_symbol(out, target_dtype="float16")
    assert dtypes_around(converted, "dcn1", float32_types(converted))[1] == F16
    got = run_symbol(converted, args)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


def gluon_net():
    net = mx.gluon.nn.HybridSequential()
    with net.name_scope():
        net.add(mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu"),
                DeformableConvolutionV2(8, kernel_size=3, padding=1, activation="relu"),
                mx.gluon.nn.Conv2D(4, 1))
    return net


@pytest.mark.parametrize("target", ["float16", "bfloat16"])
def test_convert_hybrid_block(target, rng):
    """The converted block's graph puts our block where intended; under bfloat16 it also runs
    (where MXNet's bfloat16 Convolution does) and matches float32."""
    net = gluon_net()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 8, 8)))
    net(x)
    for param in net.collect_params(".*offset_(weight|bias)").values():
        param.set_data(mx.nd.array(rng.normal(0, 0.1, param.shape)))
    expected = net(x).asnumpy()
    converted = amp.convert_hybrid_block(net, target_dtype=target, ctx=mx.cpu())
    sym = converted._cached_graph[1]
    node = next(n["name"] for n in json.loads(sym.tojson())["nodes"]
                if n["op"] == "_contrib_DeformableConvolutionV2")
    want = F16 if target == "float16" else F32
    assert dtypes_around(sym, node, float32_types(sym)) == ([want] * 5, want)
    if target == "bfloat16" and runs(_bfloat16_convolution):
        got = converted(x).astype("float32").asnumpy()
        np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


def run_checked(code):
    """Runs `code` in a fresh interpreter (conftest.run_python) and returns what it printed;
    fails the test if the process failed or died."""
    proc = run_python(textwrap.dedent(code))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_amp_init_casts_around_our_operators_in_a_fresh_process():
    """amp.init('bfloat16') after import dcnv2_mx (AMP wraps functions once per process, so this
    runs apart): imperative calls get bfloat16 inputs cast to float32 (and compute what float32
    inputs rounded to bfloat16 give); symbols get amp_cast nodes before the operator."""
    out = run_checked("""
        import json
        import mxnet as mx, numpy as np
        import dcnv2_mx
        from mxnet.contrib import amp
        amp.init(target_dtype="bfloat16")
        bf16 = amp.amp.bfloat16
        rng = np.random.RandomState(0)
        arrays = [mx.nd.array(rng.normal(0, 1, s)) for s in
                  [(1, 2, 5, 5), (1, 18, 5, 5), (1, 9, 5, 5), (3, 2, 3, 3), (3,)]]
        low = [mx.nd.amp_cast(a, dtype=bf16) for a in arrays]
        got = mx.nd.contrib.DeformableConvolutionV2(*low, kernel=(3, 3), pad=(1, 1), num_filter=3)
        rounded = [mx.nd.amp_cast(a, dtype="float32") for a in low]
        want = mx.nd.contrib.DeformableConvolutionV2(*rounded, kernel=(3, 3), pad=(1, 1),
                                                     num_filter=3)
        assert got.dtype == np.float32, got.dtype
        assert np.array_equal(got.asnumpy(), want.asnumpy())
        sym = mx.sym.contrib.DeformableConvolutionV1(
            data=mx.sym.var("data"), offset=mx.sym.var("offset"), kernel=(3, 3), num_filter=2,
            name="dcn1")
        nodes = json.loads(sym.tojson(remove_amp_cast=False))["nodes"]
        dcn = next(n for n in nodes if n["name"] == "dcn1")
        print(sorted(nodes[i]["attrs"]["dtype"] for i, _, _ in dcn["inputs"]))
        """)
    assert out.strip().splitlines()[-1] == "['float32', 'float32', 'float32', 'float32']"


def test_import_after_amp_init_warns(monkeypatch):
    monkeypatch.setattr(amp.amp, "_amp_initialized", True)
    with pytest.warns(RuntimeWarning, match="imported after mx.contrib.amp.init"):
        dcn_amp.register()


@pytest.mark.skipif(mx.context.num_gpus() == 0, reason="needs a GPU and a CUDA build of MXNet")
def test_amp_training_steps_on_gpu():
    """amp.init('float16') with dynamic loss scaling: a few SGD steps of a Gluon network with our
    block on GPU 0 keep the loss finite and decrease it."""
    out = run_checked("""
        import mxnet as mx, numpy as np
        import dcnv2_mx
        from mxnet import autograd, gluon
        from mxnet.contrib import amp
        from dcnv2_mx.gluon import DeformableConvolutionV2
        amp.init(target_dtype="float16")
        ctx = mx.gpu(0)
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Conv2D(16, 3, padding=1, activation="relu"),
                DeformableConvolutionV2(16, kernel_size=3, padding=1, activation="relu"),
                gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(4))
        net.initialize(mx.init.Xavier(), ctx=ctx)
        net.hybridize()
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
        amp.init_trainer(trainer)
        rng = np.random.RandomState(0)
        x = mx.nd.array(rng.uniform(-1, 1, (8, 3, 16, 16)), ctx=ctx)
        y = mx.nd.array(rng.randint(0, 4, 8), ctx=ctx)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        losses = []
        for _ in range(10):
            with autograd.record():
                loss = loss_fn(net(x), y).mean()
                with amp.scale_loss(loss, trainer) as scaled:
                    autograd.backward(scaled)
            trainer.step(1)
            losses.append(float(loss.asscalar()))
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        print("ok", losses)
        """)
    assert out.startswith("ok")
