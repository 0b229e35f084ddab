"""Shared helpers of the tests: loading the operators and building deformable convolution problems.

`import dcnv2_mx` loads the operator library once for the whole session (DCNV2_MX_LIBRARY
chooses another build of it).
"""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import dcnv2_mx  # noqa: F401  (registers the operators in mx.nd.contrib / mx.sym.contrib)
from conv_problem import ConvInputs


class ConvProblem(ConvInputs):
    """A :class:`ConvInputs` problem run through the MXNet operators (imperative and symbolic)."""

    def nd_arrays(self, dtype="float64"):
        """The inputs as NDArrays of `dtype`, keyed like `arrays`."""
        return {k: mx.nd.array(v, dtype=dtype) for k, v in self.arrays.items()}

    def run_nd(self, dtype="float64", out_grad=None, **overrides):
        """Runs the operator imperatively: the output as NumPy, and with `out_grad` (N, F, Ho, Wo)
        also the gradients of all inputs (a dict keyed like `arrays`)."""
        arrays = self.nd_arrays(dtype)
        op = getattr(mx.nd.contrib, self.op)
        params = dict(self.params, **overrides)
        if out_grad is None:
            return op(**arrays, **params).asnumpy()
        for a in arrays.values():
            a.attach_grad()
        with mx.autograd.record():
            out = op(**arrays, **params)
        out.backward(mx.nd.array(out_grad, dtype=dtype))
        return out.asnumpy(), {k: a.grad.asnumpy() for k, a in arrays.items()}

    def symbol(self, name="dcn", **overrides):
        """The operator on variables named like `arrays` (weight/bias auto-created as
        `<name>_weight` / `<name>_bias`)."""
        inputs = {k: mx.sym.var(k) for k in self.arrays if k not in ("weight", "bias")}
        return getattr(mx.sym.contrib, self.op)(**inputs, name=name,
                                                **dict(self.params, **overrides))

    def symbol_location(self, name="dcn"):
        """`arrays` keyed by the argument names of :meth:`symbol`."""
        return {(f"{name}_{k}" if k in ("weight", "bias") else k): v
                for k, v in self.arrays.items()}


@pytest.fixture
def rng():
    """A fixed-seed generator; also seeds NumPy's global one (used by MXNet's test utils)."""
    np.random.seed(7)
    mx.random.seed(7)
    return np.random.RandomState(1234)


@pytest.fixture
def make_problem(rng):
    """Factory: make_problem(**ConvProblem keyword arguments) -> ConvProblem."""
    return lambda **kwargs: ConvProblem(rng, **kwargs)


def run_python(source, timeout=300):
    """Runs Python `source` in a fresh interpreter, from this directory and with this session's
    `dcnv2_mx` (its sys.path), so that a case which could crash is a failed test rather than a
    dead run. Returns the CompletedProcess (text output; returncode < 0: killed by a signal)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-c", source], cwd=os.path.dirname(__file__),
                          env=env, capture_output=True, text=True, timeout=timeout)
