"""Tests of the benchmark's peer engines (dcnv2_mx.tools.bench_peers): each computes what our
operator computes, a peer that differs is an error, and a missing or old package is reported
rather than run. Tests that need an engine are skipped, with the reason, where it is missing.
Also the whole-network benchmark's offset-branch contender (dcnv2_mx.tools.bench_model)."""
import os
import sys
import types

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from dcnv2_mx.tools import bench_model, bench_peers


@pytest.fixture(params=bench_peers.PEERS, ids=lambda peer: peer.label)
def peer(request):
    runnable, skipped = bench_peers.available(mx.cpu())
    if request.param not in runnable:
        pytest.skip(skipped[request.param.label])
    return request.param


def float32_inputs(problem):
    return {name: value.astype(np.float32) for name, value in problem.arrays.items()}


@pytest.mark.parametrize("stride, dg", [(1, 1), (2, 2)])
def test_peer_agrees_with_ours_and_the_reference(peer, make_problem, stride, dg):
    """Jittered samples: some in the border bands (-1, 0) and (H-1, H), some off the map."""
    problem = make_problem(channels=4, height=7, width=6, num_filter=3, stride=(stride,) * 2,
                           num_deformable_group=dg)
    run = bench_peers.contender(peer, float32_inputs(problem), stride, 1, dg,
                                problem.run_nd("float32"), "tiny")
    want = problem.reference()
    np.testing.assert_allclose(run(), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_peer_that_differs_from_ours_is_an_error(peer, make_problem):
    problem = make_problem()
    wrong = problem.run_nd("float32") * (1 + 1e-3)
    with pytest.raises(bench_peers.PeerMismatchError, match=f"{peer.label} differs .* tiny"):
        bench_peers.contender(peer, float32_inputs(problem), 1, 1, 1, wrong, "tiny")


def test_missing_and_old_packages_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    monkeypatch.setitem(sys.modules, "onnx", types.ModuleType("onnx"))
    old = types.ModuleType("onnxruntime")
    old.__version__ = "1.24.4"
    monkeypatch.setitem(sys.modules, "onnxruntime", old)
    runnable, skipped = bench_peers.available(mx.cpu())
    assert runnable == []
    assert skipped["OpenVINO"].startswith("skipped: package missing (openvino;")
    assert skipped["onnxruntime"] == "skipped: onnxruntime 1.24.4 is older than 1.25"


def test_peers_are_not_compared_on_a_gpu_context():
    runnable, skipped = bench_peers.available(mx.gpu(0))
    assert runnable == [] and set(skipped) == {peer.label for peer in bench_peers.PEERS}
    assert all("CPU engine" in why for why in skipped.values())


def test_peers_get_the_thread_count_of_our_operators(monkeypatch):
    monkeypatch.delenv("MXNET_OMP_MAX_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert bench_peers.threads() == os.cpu_count()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert bench_peers.threads() == 3
    monkeypatch.setenv("MXNET_OMP_MAX_THREADS", "2")
    assert bench_peers.threads() == 2


@pytest.mark.parametrize("hybridize", [False, True])
def test_offset_branch_contender_is_the_plain_convolution_with_the_branch_kept(hybridize):
    """The floor network's layer computes MXNet's Convolution exactly, and its output still
    depends on the offset-and-mask branch (else MXNet would drop the branch it is there to time)."""
    layer = bench_model._OffsetBranchOnly(6, 3, strides=2, padding=1, in_channels=4,
                                          offset_bias_initializer=mx.init.Normal(1.0))
    layer.initialize()
    if hybridize:
        layer.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(np.random.default_rng(0).normal(size=(2, 4, 9, 9)))
    x.attach_grad()
    with autograd.record():
        out = layer(x)
    out.backward(mx.nd.ones_like(out))
    weight, bias = layer.deformable_conv_weight.data(), layer.deformable_conv_bias.data()
    want = mx.nd.Convolution(x, weight, bias, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                             num_filter=6)
    np.testing.assert_array_equal(out.asnumpy(), want.asnumpy())
    assert layer.offset_weight.grad().shape == layer.offset_weight.shape
    graph = layer(mx.sym.var("data"))
    assert f"{layer.prefix}offset_weight" in graph.list_arguments()
    assert any("sigmoid" in node for node in graph.get_internals().list_outputs())  # masks
