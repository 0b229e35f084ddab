"""Command line: ``python -m dcnv2_mx COMMAND`` (also ``dcnv2-mx``).

* ``info``  -- MXNet build, the loaded dcnv2_mx library, BLAS, threads, operators, dtypes;
* ``check`` -- self-test of the build on each device (exit status 1 on any failure);
* ``bench`` -- the benchmark suite with a ratio table and an optional plot (``--model``: whole
  networks, dcnv2_mx.tools.bench_model);
* ``demo``  -- trains a small network with regular, DCNv1 and DCNv2 layers on generated
  deformed digits and draws the learned sampling locations;
* ``viz``   -- the sampling-location figure for an exported model and any image;
* ``export-onnx`` -- ONNX export of a saved model, verified in onnxruntime
  (dcnv2_mx.tools.onnx_export);
* ``dist-demo`` -- training on MXNet's dist_sync kvstore with a scheduler, a server and workers
  on this machine (dcnv2_mx.tools.dist_train).
"""
import argparse
import ctypes
import os
import sys

__all__ = ["main", "build_parser"]


def _require(*modules, extra="cli"):
    """Exits with an install hint when an optional dependency (of the `extra`) is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"this command needs {' and '.join(missing)}: "
                         f"pip install 'dcnv2-mx[{extra}]' (or pip install {' '.join(missing)})")


def _context(name):
    import mxnet as mx

    return mx.gpu(0) if name == "gpu" else mx.cpu()


# ---------------------------------------------------------------------------------------- info

def _registered_operators():
    """Names of the operators this package installed into mx.nd.contrib."""
    import mxnet as mx

    return sorted(name for name in dir(mx.nd.contrib)
                  if getattr(getattr(mx.nd.contrib, name), "__module__", "").startswith(
                      "dcnv2_mx"))


def _dtype_probe(op_name, ctx, dtype):
    """Whether a tiny forward of the operator runs with this dtype on ctx."""
    import mxnet as mx

    def array(*shape):
        return mx.nd.ones(shape, ctx=ctx, dtype=dtype)

    op = getattr(mx.nd.contrib, op_name)
    try:
        if op_name == "ModulatedDeformablePSROIPooling":
            rois = mx.nd.array([[0, 0, 0, 3, 3]], ctx=ctx, dtype=dtype)
            out = op(data=array(1, 4, 4, 4), rois=rois, trans=array(1, 2, 2, 2),
                     mask=array(1, 1, 2, 2), spatial_scale=1.0, output_dim=4, group_size=1,
                     pooled_size=2, trans_std=0.1)
        else:
            inputs = dict(data=array(1, 2, 4, 4), offset=array(1, 18, 4, 4),
                          weight=array(2, 2, 3, 3), bias=array(2))
            if op_name == "DeformableConvolutionV2":
                inputs["mask"] = array(1, 9, 4, 4)
            out = op(**inputs, kernel=(3, 3), pad=(1, 1), num_filter=2)
        out.wait_to_read()
        return True
    except mx.base.MXNetError:
        return False


def _blas_summary():
    """The GEMM libraries that the operator library links: oneDNN (float), OpenBLAS (float64)."""
    from dcnv2_mx import library

    parts = []
    dnnl = [p for p in library._gemm_libraries() if "dnnl" in os.path.basename(p)]
    if dnnl:

        class Version(ctypes.Structure):
            _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

        version_of = ctypes.CDLL(dnnl[0]).dnnl_version
        version_of.restype = ctypes.POINTER(Version)
        v = version_of().contents
        parts.append(f"float: oneDNN {v.major}.{v.minor}.{v.patch} ({os.path.realpath(dnnl[0])})")
    else:
        parts.append("float: oneDNN (onednn-cpu-gomp) not installed")
    try:
        import scipy_openblas32
        config = scipy_openblas32.get_openblas_config()  # also loads the library as .dll
        parts.append(f"float64: {config} ({scipy_openblas32.get_lib_dir()})")
    except ImportError:
        parts.append("float64: scipy-openblas32 not importable")
    return "; ".join(parts) + "; each GEMM runs on the calling OpenMP thread"


def cmd_info(args):
    """Prints the environment report; returns 0."""
    import mxnet as mx

    import dcnv2_mx
    from dcnv2_mx import library
    from dcnv2_mx.tools import selfcheck
    from dcnv2_mx.tools.table import format_table

    features = mx.runtime.Features()
    enabled = [name for name in ("CUDA", "CUDNN", "NCCL", "MKLDNN", "OPENMP", "BLAS_OPEN",
                                 "BLAS_MKL", "BLAS_ATLAS", "BLAS_APPLE", "LAPACK", "F16C",
                                 "INT64_TENSOR_SIZE") if features.is_enabled(name)]
    path = library.loaded_path()
    built_for = ctypes.CDLL(path).dcnv2_mx_built_for_mxnet
    built_for.restype = ctypes.c_char_p
    gpus = mx.context.num_gpus() if features.is_enabled("CUDA") else 0
    lines = [
        ("dcnv2_mx", f"{dcnv2_mx.__version__} ({os.path.dirname(dcnv2_mx.__file__)})"),
        ("library", path + (f"  [{library.ENV_LIBRARY}]" if os.environ.get(library.ENV_LIBRARY)
                            else "")),
        ("built for", f"MXNet {built_for().decode()}"),
        ("MXNet", f"{mx.__version__} ({os.path.dirname(mx.__file__)})"),
        ("features", ", ".join(enabled) or "none"),
        ("GPUs", str(gpus)),
        ("CPU ISA", library.cpu_kernels()),
        ("BLAS", _blas_summary()),
        ("threads", f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                    f"MXNET_OMP_MAX_THREADS={os.environ.get('MXNET_OMP_MAX_THREADS', 'unset')}, "
                    f"{os.cpu_count()} processors"),
    ]
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))
    rows = []
    for ctx in selfcheck.contexts("all"):
        for op in _registered_operators():
            dtypes = [d for d in ("float16", "float32", "float64") if _dtype_probe(op, ctx, d)]
            rows.append((op, str(ctx), ", ".join(dtypes) or "none"))
    print()
    print(format_table(["operator", "device", "dtypes"], rows))
    return 0


# --------------------------------------------------------------------------------------- check

def cmd_check(args):
    """Runs the self-test; returns 0 when every check passes, 1 otherwise."""
    from dcnv2_mx.tools import selfcheck

    try:
        ctxs = selfcheck.contexts(args.ctx)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = selfcheck.run_checks(
        ctxs, progress=lambda label: print(f"checking {label} ...", file=sys.stderr))
    print(selfcheck.format_results(results))
    failed = sum(r.status == "FAIL" for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------- bench

def cmd_bench(args):
    """Runs the benchmark suite (the networks with --model); prints the tables and writes the
    plot; returns 0, 1 when a peer engine disagrees with ours, 2 for unknown --cases."""
    _require("tqdm", *(["matplotlib"] if args.plot else []))
    if args.model:
        _require("gluoncv", extra="gluoncv")
    from tqdm import tqdm

    from dcnv2_mx.tools import bench_model, bench_peers, benchmark

    if args.model:
        cases = bench_model.QUICK_MODEL_CASES if args.quick else bench_model.MODEL_CASES
        pool_case = None
    else:
        cases = benchmark.QUICK_CASES if args.quick else benchmark.CASES
        pool_case = benchmark.QUICK_POOL_CASE if args.quick else benchmark.POOL_CASE
    if args.cases:
        wanted = args.cases.split(",")
        known = [c.name for c in cases] + ([pool_case.name] if pool_case else [])
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"error: --cases: unknown {unknown}; choose from {known}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
        pool_case = pool_case if pool_case and pool_case.name in wanted else None
    ctx = _context(args.ctx)
    summary = benchmark.machine_summary(ctx)
    if args.model:
        suite, tool = bench_model.run(cases, repeat=args.repeat, ctx=ctx), bench_model
        notes = [f"median of {args.repeat} alternating runs; 'x' columns are time ratios to "
                 "the plain network (lower is better); builtin: inference only (no CPU "
                 "backward)"]
    else:
        peers, skipped = bench_peers.available(ctx)
        suite = benchmark.run(cases, pool_case, repeat=args.repeat, ctx=ctx, peers=peers)
        tool = benchmark
        notes = [f"median of {args.repeat} alternating runs; 'x' columns are time ratios "
                 "('builtin vs ours' > 1: ours is faster; 'ours / peer': our forward over the "
                 "peer's, < 1: ours is faster); peak MiB: resident memory one forward+backward "
                 "added at its peak", bench_peers.note(peers, skipped)]
    results = []
    try:
        with tqdm(total=len(cases) + (pool_case is not None), desc="bench", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for result in suite:
                bar.set_postfix_str(result.case.name)
                bar.update()
                results.append(result)
    except bench_peers.PeerMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    print("\n".join(notes))
    print()
    print(tool.format_results(results))
    if args.plot:
        tool.plot_results(results, args.plot, title=summary)
        print(f"\nplot written to {args.plot}")
    return 0


# ---------------------------------------------------------------------------------------- demo

def cmd_demo(args):
    """Trains the three demo networks; prints the table; writes the figure; returns 0."""
    _require("tqdm", "matplotlib")
    from dcnv2_mx.tools import demo
    from dcnv2_mx.tools.table import format_table

    print(f"Task: {len(demo.DIGITS)} digit classes, {args.train_size} training and "
          f"{args.test_size} test images ({demo.IMAGE_SIZE}x{demo.IMAGE_SIZE}), randomly "
          "rotated, scaled, sheared and elastically warped; the same network trained "
          f"{args.epochs} epochs three ways (seed {args.seed}).", file=sys.stderr)
    histories, figure = demo.run_demo(epochs=args.epochs, ctx=_context(args.ctx),
                                      seed=args.seed, out=args.out,
                                      train_size=args.train_size, test_size=args.test_size,
                                      show_progress=not args.no_progress)
    rows = [(variant, demo.VARIANTS[variant], f"{h['params']:,}", f"{h['test_acc'][-1]:.3f}",
             f"{max(h['test_acc']):.3f}", f"{h['train_loss'][-1]:.3f}",
             f"{sum(h['epoch_seconds']) / len(h['epoch_seconds']):.1f}")
            for variant, h in histories.items()]
    print(format_table(["variant", "last two 3x3 layers", "params", "test acc", "best acc",
                        "train loss", "s/epoch"], rows))
    prefix = os.path.join(args.out, demo.MODEL_PREFIX)
    print(f"\nfigure written to {figure}")
    print(f"DCNv2 model exported to {prefix}-symbol.json / {prefix}-0000.params "
          f"(python -m dcnv2_mx viz --model {prefix})")
    return 0


# ----------------------------------------------------------------------------------------- viz

def cmd_viz(args):
    """Draws the sampling locations of an exported model on an image; returns 0."""
    _require("matplotlib")
    from dcnv2_mx.tools import demo

    symbol_file = f"{args.model}-symbol.json"
    params_file = f"{args.model}-{args.epoch:04d}.params"
    for path in (symbol_file, params_file):
        if not os.path.exists(path):
            print(f"error: {path} not found (--model is the prefix given to "
                  "HybridBlock.export; run `python -m dcnv2_mx demo` to make one)",
                  file=sys.stderr)
            return 2
    probe = demo.SamplingProbe(symbol_file, params_file, _context(args.ctx))
    image = demo.load_image(args.image, probe.channels, args.size)
    samplings = probe.locate(image[None], units=args.units)[0]
    demo.viz_figure(args.out, image, samplings)
    print(f"{len(samplings)} unit(s) of the last DCNv2 layer"
          f"{' and the one before it' if len(probe.layers) == 2 else ''}; "
          f"figure written to {args.out}")
    return 0


def build_parser():
    """The argparse parser of the command line."""
    console = os.path.basename(sys.argv[0]) == "dcnv2-mx"
    parser = argparse.ArgumentParser(
        prog="dcnv2-mx" if console else "python -m dcnv2_mx", description="DCNv2 operators for MXNet: "
        "self-test, benchmark, demo, visualisation, ONNX export, distributed training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    info = sub.add_parser("info", help="MXNet, library, BLAS, threads, operators and dtypes")
    info.set_defaults(run=cmd_info)

    check = sub.add_parser("check", help="self-test of this build on each device")
    check.add_argument("--ctx", choices=("cpu", "gpu", "all"), default="all",
                       help="devices to check (all: the CPU and GPU 0 if present)")
    check.set_defaults(run=cmd_check)

    bench = sub.add_parser("bench", help="benchmark against mx.nd.Convolution, MXNet's "
                           "built-in deformable operators, OpenVINO and onnxruntime; --model: "
                           "ResNet-50 with and without DCNv2")
    bench.add_argument("--repeat", type=int, default=10, help="timed runs per contender")
    bench.add_argument("--cases", help="comma-separated case names (default: all)")
    bench.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    bench.add_argument("--model", action="store_true", help="whole networks: GluonCV's "
                       "ResNet-50 v1b plain, with our DCNv2 and with MXNet's (needs gluoncv)")
    bench.add_argument("--plot", metavar="PNG", help="also draw the ratios into this file")
    bench.add_argument("--ctx", choices=("cpu", "gpu"), default="cpu")
    bench.set_defaults(run=cmd_bench)

    demo = sub.add_parser("demo", help="train regular / DCNv1 / DCNv2 networks on deformed "
                          "digits and draw the learned sampling locations")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--ctx", choices=("cpu", "gpu"), default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="dcnv2-demo", help="output directory")
    demo.add_argument("--train-size", type=int, default=8192)
    demo.add_argument("--test-size", type=int, default=1024)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=cmd_demo)

    viz = sub.add_parser("viz", help="sampling locations of an exported DCNv2 model on an image")
    viz.add_argument("--model", default=os.path.join("dcnv2-demo", "dcnv2_demo"),
                     help="prefix of the exported model (PREFIX-symbol.json, "
                     "PREFIX-EPOCH.params); default: the demo's model")
    viz.add_argument("--epoch", type=int, default=0)
    viz.add_argument("--image", help="image file (default: matplotlib's sample photograph)")
    viz.add_argument("--size", type=int, default=128, help="longer image side fed to the model")
    viz.add_argument("--units", type=int, default=3, help="activation units to show")
    viz.add_argument("--out", default="viz.png")
    viz.add_argument("--ctx", choices=("cpu", "gpu"), default="cpu")
    viz.set_defaults(run=cmd_viz)

    from dcnv2_mx.tools import dist_train, onnx_export
    onnx_export.add_parser(sub)
    dist_train.add_parser(sub)
    return parser


def main(argv=None):
    """Runs the command line with argv (default sys.argv[1:]); returns the exit status."""
    args = build_parser().parse_args(argv)
    import dcnv2_mx  # noqa: F401  (loads the operators)

    return args.run(args)
