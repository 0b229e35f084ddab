"""The operators on the lists of MXNet's automatic mixed precision (``mx.contrib.amp``).

AMP decides per operator name, from lists, which precision an operator runs in and inserts
``amp_cast`` nodes accordingly (``amp.init`` for imperative and symbolic code,
``amp.convert_symbol`` / ``convert_model`` / ``convert_hybrid_block`` for whole graphs). Operators
on no list make the conversion produce graphs that fail type inference ("input 'weight' is
float32 but input 'data' is float16"), so :func:`register` (called by ``import dcnv2_mx``) adds
ours, per target type:

* float16 (AMP's GPU target): both convolutions run in float16 — the CUDA kernels compute
  positions, interpolation weights and every sum in float32 from float16 tensors, and the CPU
  kernels accept float16 the same way (stored float16, computed float32).
  ``ModulatedDeformablePSROIPooling`` runs in float32: its RoIs are image coordinates, which
  float16 rounds to half a pixel above 1024 (MXNet lists its own ``DeformablePSROIPooling``
  there too).
* bfloat16 (AMP's CPU target): all three run in float32, AMP casting around them: MXNet's
  extension API has no bfloat16 type for library operators, and on CPU MXNet's own bfloat16
  convolution is slower than its float32 one (so there is no speed to gain).

Import ``dcnv2_mx`` before calling ``amp.init()``: ``amp.init`` wraps the functions named on the
lists at that moment, once per process.
"""
import warnings

__all__ = ["register", "FLOAT16_OPS", "FLOAT32_OPS_UNDER_FLOAT16", "FLOAT32_OPS_UNDER_BFLOAT16"]

_CONVOLUTIONS = ["_contrib_DeformableConvolutionV2", "_contrib_DeformableConvolutionV1"]
_POOLING = ["_contrib_ModulatedDeformablePSROIPooling"]

#: Run in float16 under ``target_dtype='float16'``.
FLOAT16_OPS = _CONVOLUTIONS
#: Run in float32 (inputs cast) under ``target_dtype='float16'``.
FLOAT32_OPS_UNDER_FLOAT16 = _POOLING
#: Run in float32 (inputs cast) under ``target_dtype='bfloat16'``.
FLOAT32_OPS_UNDER_BFLOAT16 = _CONVOLUTIONS + _POOLING


def register():
    """Appends the operators to AMP's float16 and bfloat16 lists (idempotent).

    Operators this build does not have (a library without the pooling) are left out: AMP's
    ``init`` fails on a listed name that MXNet does not know.
    """
    import mxnet as mx
    from mxnet.contrib import amp

    known = set(dir(mx.sym.contrib))
    lists = [(amp.list_lp16_ops("float16"), FLOAT16_OPS),
             (amp.list_fp32_ops("float16"), FLOAT32_OPS_UNDER_FLOAT16),
             (amp.list_fp32_ops(amp.amp.bfloat16), FLOAT32_OPS_UNDER_BFLOAT16)]
    for amp_list, ops in lists:
        amp_list.extend(op for op in ops
                        if op not in amp_list and op.replace("_contrib_", "") in known)
    if amp.amp._amp_initialized:
        warnings.warn("dcnv2_mx was imported after mx.contrib.amp.init(): AMP does not cast "
                      "around its operators in imperative or hybridized code (import dcnv2_mx "
                      "first); amp.convert_symbol/convert_model/convert_hybrid_block do",
                      RuntimeWarning, stacklevel=3)
