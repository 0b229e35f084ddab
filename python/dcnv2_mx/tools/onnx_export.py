"""``python -m dcnv2_mx export-onnx PREFIX``: exports a saved model to ONNX and verifies it.

The model is what ``HybridBlock.export(PREFIX, epoch)`` or ``mx.model.save_checkpoint`` wrote
(``PREFIX-symbol.json``, ``PREFIX-EPOCH.params``). The export goes through
:func:`dcnv2_mx.onnx.export_model`; the verification runs the ONNX file in onnxruntime's CPU
provider and the saved model in MXNet on the same random inputs and reports the largest absolute
difference of each output.
"""
import os
import sys

import numpy as np

__all__ = ["load_saved_model", "export_saved_model", "compare_with_onnxruntime", "add_parser"]


def load_saved_model(prefix, epoch=0):
    """(symbol, params, data_names): a saved model, its parameters without the ``arg:``/``aux:``
    prefixes, and the names of its data inputs (the inputs that are not parameters), in order."""
    import mxnet as mx

    import dcnv2_mx  # noqa: F401  (saved graphs with our operators load only once it is imported)

    sym = mx.sym.load(f"{prefix}-symbol.json")
    params = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}
    data_names = [n for n in sym.list_inputs() if n not in params]
    return sym, params, data_names


def export_saved_model(prefix, in_shapes, onnx_file_path, epoch=0):
    """Exports the saved model `prefix` with data shapes `in_shapes` (one tuple per data input,
    in the order of :func:`load_saved_model`'s data_names) to `onnx_file_path`; returns it."""
    from dcnv2_mx import onnx as dcn_onnx

    sym, params, data_names = load_saved_model(prefix, epoch)
    if len(in_shapes) != len(data_names):
        raise ValueError(f"the model has {len(data_names)} data input(s) {data_names}, "
                         f"{len(in_shapes)} shape(s) were given")
    return dcn_onnx.export_model(sym, params, in_shapes, onnx_file_path)


def compare_with_onnxruntime(onnx_file_path, prefix, inputs, epoch=0):
    """Runs the ONNX file in onnxruntime (CPU) and the saved model in MXNet on `inputs` (a dict
    of data input name to float32 array); returns a list of (output name, max |onnxruntime -
    MXNet|, max |MXNet|), one per output."""
    import mxnet as mx
    import onnxruntime

    sym, params, _ = load_saved_model(prefix, epoch)
    aux_names = set(sym.list_auxiliary_states())
    args = {k: v for k, v in params.items() if k not in aux_names}
    args.update({k: mx.nd.array(v, dtype=v.dtype) for k, v in inputs.items()})
    executor = sym.bind(mx.cpu(), args=args, grad_req="null",
                        aux_states={k: v for k, v in params.items() if k in aux_names})
    expected = [out.asnumpy() for out in executor.forward(is_train=False)]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(onnx_file_path, options,
                                           providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    results = []
    for name, want in zip(sym.list_outputs(), expected):
        onnx_name = name[:-len("_output")] if name.endswith("_output") else name
        diff = float(np.abs(got[onnx_name].astype(np.float64) - want).max()) if want.size else 0.0
        results.append((onnx_name, diff, float(np.abs(want).max()) if want.size else 0.0))
    return results


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"--shape {text!r}: expected positive integers separated by commas")
    return shape


def cmd_export_onnx(args):
    """Exports, verifies and prints the differences; returns 0 when every output agrees within
    --rtol (relative to the output's largest magnitude), 1 otherwise, 2 on bad arguments."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"export-onnx needs {' and '.join(missing)}: "
                         "pip install 'dcnv2-mx[onnx]' (onnx>=1.14,<1.19, onnxruntime>=1.25)")
    import mxnet as mx
    import onnx
    import onnxruntime

    from dcnv2_mx import onnx as dcn_onnx

    for path in (f"{args.prefix}-symbol.json", f"{args.prefix}-{args.epoch:04d}.params"):
        if not os.path.exists(path):
            print(f"error: {path} not found (PREFIX is the prefix given to HybridBlock.export)",
                  file=sys.stderr)
            return 2
    try:
        shapes = [_shape(s) for s in args.shape]
        out = args.out or f"{args.prefix}.onnx"
        export_saved_model(args.prefix, shapes, out, epoch=args.epoch)
    except (ValueError, dcn_onnx.OnnxExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _, _, data_names = load_saved_model(args.prefix, args.epoch)
    rng = np.random.RandomState(args.seed)
    inputs = {n: rng.uniform(-1, 1, s).astype(np.float32) for n, s in zip(data_names, shapes)}
    model = onnx.load(out)
    ops = [node.op_type for node in model.graph.node]
    print(f"wrote {out}: opset {model.opset_import[0].version}, {len(ops)} nodes, "
          f"{ops.count('DeformConv')} DeformConv (onnx {onnx.__version__}, MXNet {mx.__version__})")
    print(f"onnxruntime {onnxruntime.__version__} (CPU) vs MXNet on uniform(-1, 1) inputs "
          + ", ".join(f"{n} {s}" for n, s in zip(data_names, shapes)) + ":")
    status = 0
    for name, diff, scale in compare_with_onnxruntime(out, args.prefix, inputs, args.epoch):
        ok = diff <= args.rtol * max(scale, 1e-30)
        status |= not ok
        print(f"  {name}: max |difference| {diff:.3g} (max |output| {scale:.3g}) "
              f"{'OK' if ok else f'EXCEEDS rtol {args.rtol:g}'}")
    return status


def add_parser(sub):
    """Adds the ``export-onnx`` subcommand to the argparse subparsers `sub`."""
    parser = sub.add_parser("export-onnx", help="export a saved model to ONNX and verify it in "
                            "onnxruntime (needs onnx<1.19 and onnxruntime>=1.25)")
    parser.add_argument("prefix", help="model prefix (PREFIX-symbol.json, PREFIX-EPOCH.params)")
    parser.add_argument("--shape", action="append", required=True,
                        help="shape of a data input, e.g. 1,3,224,224 (once per data input, in "
                        "the model's input order)")
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--out", help="ONNX file (default: PREFIX.onnx)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="allowed max difference relative to the largest output magnitude")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.set_defaults(run=cmd_export_onnx)
