"""``python -m dcnv2_mx dist-demo``: data-parallel training on MXNet's ``dist_sync`` kvstore.

MXNet's parameter server (ps-lite) has three roles, chosen by environment variables: a scheduler
that introduces the others, servers that hold the parameters and run the optimizer
(``update_on_kvstore``), and workers that compute gradients. :func:`launch_local` starts all of
them on this machine, on 127.0.0.1 only, with a free port; each worker runs
``python -m dcnv2_mx.tools.dist_train --out DIR`` (:func:`train` on its share of the batch) and
the demo then trains the same network in one process on the whole batch (:func:`train` without a
kvstore) and compares the parameters: synchronous data parallelism computes the same steps.

Across machines the same commands run with these variables (MXNet's ``tools/launch.py`` sets
them the same way over ssh): on every machine ``DMLC_PS_ROOT_URI`` (the scheduler's address),
``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``, ``DMLC_NODE_HOST`` (this
machine's address) and ``DMLC_ROLE`` (``scheduler`` / ``server``: ``python -c "import mxnet"``,
which serves until the workers finish; ``worker``: the training script). Servers and the
scheduler need no dcnv2_mx: only workers run our operators.

The network: Conv2D -> our DCNv2 block -> our modulated deformable RoI head -> Dense, classifying
two RoIs per image; no batch normalisation, so that half batches give the same gradients.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np

__all__ = ["build_network", "make_batch", "train", "launch_local", "add_parser"]

#: Images per batch, RoIs per image, classes.
BATCH, ROIS_PER_IMAGE, CLASSES = 4, 2, 3
IMAGE = (3, 16, 16)
LEARNING_RATE = 0.1


def build_network(seed=0):
    """The demo network with parameters drawn from a NumPy generator seeded with `seed` (the same
    in every process); call as ``net(images, rois)``."""
    import mxnet as mx
    from mxnet import gluon

    from dcnv2_mx.gluon import DeformableConvolutionV2, ModulatedDeformableRoIPooling

    class RoIClassifier(gluon.HybridBlock):
        def __init__(self):
            super().__init__(prefix="dist_demo_")
            with self.name_scope():
                self.body = gluon.nn.HybridSequential()
                self.body.add(gluon.nn.Conv2D(8, 3, padding=1, activation="relu"),
                              DeformableConvolutionV2(8, kernel_size=3, padding=1,
                                                      activation="relu"))
                self.head = ModulatedDeformableRoIPooling(8, pooled_size=3, spatial_scale=1.0,
                                                          hidden_units=16)
                self.classes = gluon.nn.Dense(CLASSES)

        def hybrid_forward(self, F, images, rois):
            return self.classes(self.head(self.body(images), rois))

    net = RoIClassifier()
    net.initialize()
    images, rois, _ = make_batch()
    # The forward pass that gives the deferred parameters their shapes runs in training mode: in
    # inference mode MXNet's oneDNN Conv2D reorders its weight in place into a blocked layout,
    # which the dist kvstore cannot push (MXNet 1.9.1 fails that push on its engine thread and
    # the server never gets the Trainer's initial values).
    with mx.autograd.train_mode():
        net(mx.nd.array(images), mx.nd.array(rois))
    rng = np.random.RandomState(seed)
    for param in net.collect_params().values():
        param.set_data(mx.nd.array(rng.normal(0, 0.2, param.shape)))
    return net


def make_batch(seed=1):
    """(images (BATCH, 3, 16, 16), rois (BATCH*ROIS_PER_IMAGE, 5), labels): one fixed batch."""
    rng = np.random.RandomState(seed)
    images = rng.uniform(-1, 1, (BATCH,) + IMAGE)
    corners = rng.uniform(0, IMAGE[1] / 2, (BATCH * ROIS_PER_IMAGE, 2))
    sizes = rng.uniform(4, IMAGE[1] / 2, (BATCH * ROIS_PER_IMAGE, 2))
    rois = np.concatenate([np.repeat(np.arange(BATCH), ROIS_PER_IMAGE)[:, None], corners,
                           corners + sizes], axis=1)
    labels = rng.randint(0, CLASSES, BATCH * ROIS_PER_IMAGE)
    return images, rois, labels


def shard(rank, num_workers):
    """Worker `rank`'s images, RoIs (batch indices renumbered within the shard) and labels."""
    images, rois, labels = make_batch()
    per_worker = BATCH // num_workers
    lo, hi = rank * per_worker, (rank + 1) * per_worker
    keep = (rois[:, 0] >= lo) & (rois[:, 0] < hi)
    local = rois[keep].copy()
    local[:, 0] -= lo
    return images[lo:hi], local, labels[keep]


def train(steps, kvstore=None, log=None):
    """Trains the demo network for `steps` SGD steps and returns it.

    Without `kvstore`, on the whole batch in this process; with a ``dist_sync`` kvstore, on this
    worker's share, the server summing the workers' gradients. Either way the gradient of each
    step is that of the summed RoI losses divided by the RoIs of the whole batch, so the runs
    compute the same parameters up to float rounding. `log(step, loss)` gets the local loss.

    The workers update the parameters themselves (``update_on_kvstore=False``; the kvstore only
    sums gradients): with updates on the servers, MXNet 1.9.1 drops the Parameters' ``lr_mult``
    when it sends the optimizer there, and our blocks train their offset branches at
    ``offset_lr_mult=0.1``, which the servers would then ignore.
    """
    import mxnet as mx
    from mxnet import autograd, gluon

    if kvstore is None:
        images, rois, labels = make_batch()
    else:
        if BATCH % kvstore.num_workers:
            raise ValueError(f"{kvstore.num_workers} workers do not divide the batch of {BATCH}")
        images, rois, labels = shard(kvstore.rank, kvstore.num_workers)
    net = build_network()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LEARNING_RATE},
                            kvstore=kvstore, update_on_kvstore=False if kvstore else None)
    if kvstore is not None:
        # The Trainer broadcasts rank 0's parameters lazily, in the first step() just before the
        # first gradient push-pull. MXNet 1.9.1's dist kvstore orders that push-pull after the
        # broadcast's pull only through a buffer the push-pull replaces, so the server could sum
        # the gradients first and answer the late pull with the sum, which then overwrote the
        # parameter. Broadcasting here and waiting for it keeps the two apart.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    images, rois, labels = mx.nd.array(images), mx.nd.array(rois), mx.nd.array(labels)
    for step in range(steps):
        with autograd.record():
            loss = loss_fn(net(images, rois), labels).sum()
        loss.backward()
        trainer.step(BATCH * ROIS_PER_IMAGE)
        if log:
            log(step, float(loss.asscalar()))
    return net


def parameters(net):
    """The parameters as NumPy arrays, in the network's order."""
    return [p.data().asnumpy() for p in net.collect_params().values()]


def free_port():
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_local(workdir, num_workers=2, steps=3, timeout=240):
    """Runs a scheduler, one server and `num_workers` workers on 127.0.0.1 and waits for them.

    Every process gets at most `timeout` seconds in all and is killed otherwise; none outlives
    this call, also on errors. Each worker saves its parameters to ``workdir/worker<rank>.npz``;
    the logs are ``workdir/scheduler.log``, ``server.log`` and ``worker<i>.log`` for the i-th
    worker started (ps-lite assigns the ranks). Returns the paths of the parameter
    files; raises RuntimeError naming the process and its log when one fails or times out.
    """
    env = dict(os.environ, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(free_port()),
               DMLC_NUM_SERVER="1", DMLC_NUM_WORKER=str(num_workers),
               DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo",
               # The processes share this machine's cores.
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    serve = [sys.executable, "-c", "import mxnet"]
    work = [sys.executable, "-m", "dcnv2_mx.tools.dist_train", "--steps", str(steps),
            "--out", workdir]
    roles = [("scheduler", serve), ("server", serve)] + [
        (f"worker{i}", work) for i in range(num_workers)]
    procs = []
    deadline = time.monotonic() + timeout
    try:
        for name, cmd in roles:
            log = open(os.path.join(workdir, f"{name}.log"), "w")
            procs.append((name, subprocess.Popen(
                cmd, env=dict(env, DMLC_ROLE=name.rstrip("0123456789")), stdout=log,
                stderr=subprocess.STDOUT), log))
        running = {name: proc for name, proc, _ in procs}
        while running:  # the workers finish first, then the server and the scheduler
            for name, proc in list(running.items()):
                status = proc.poll()
                if status is None:
                    continue
                if status != 0:
                    raise RuntimeError(f"{name} exited with status {status} "
                                       f"(log: {os.path.join(workdir, name + '.log')})")
                del running[name]
            if running and time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(running)} did not finish within {timeout:g} s "
                                   f"(logs in {workdir})")
            time.sleep(0.1)
    finally:
        for _, proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()
    return [os.path.join(workdir, f"worker{i}.npz") for i in range(num_workers)]


def cmd_dist_demo(args):
    """Runs the local cluster and the single-process reference; prints the largest parameter
    difference; returns 0 when it is within float32 rounding, 1 otherwise."""
    import tempfile

    import dcnv2_mx  # noqa: F401  (the reference run below uses our operators)

    workdir = args.out or tempfile.mkdtemp(prefix="dcnv2-dist-demo-")
    os.makedirs(workdir, exist_ok=True)
    print(f"scheduler, server and {args.workers} workers on 127.0.0.1 ({args.steps} steps, "
          f"logs in {workdir}) ...")
    started = time.monotonic()
    try:
        files = launch_local(workdir, args.workers, args.steps, args.timeout)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dist_sync training finished in {time.monotonic() - started:.1f} s")
    reference = parameters(train(args.steps))
    worst = 0.0
    for path in files:
        with np.load(path) as saved:
            got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        worst = max([worst] + [float(np.abs(a - b).max()) for a, b in zip(got, reference)])
    scale = max(float(np.abs(r).max()) for r in reference)
    ok = worst <= 1e-5 * scale
    print(f"max |dist_sync - single process| over all parameters and workers: {worst:.3g} "
          f"(max |parameter| {scale:.3g}) {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def add_parser(sub):
    """Adds the ``dist-demo`` subcommand to the argparse subparsers `sub`."""
    parser = sub.add_parser("dist-demo", help="train on MXNet's dist_sync kvstore with a "
                            "scheduler, a server and workers on 127.0.0.1; compare with one "
                            "process")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2, 4),
                        help="worker processes (each gets BATCH/workers of the 4 images)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds before every process is killed")
    parser.add_argument("--out", help="directory for the logs and parameters (default: new "
                        "temporary directory)")
    parser.set_defaults(run=cmd_dist_demo)


def worker_main(argv=None):
    """A worker process (``DMLC_ROLE=worker``): trains on its shard, saves worker<rank>.npz."""
    parser = argparse.ArgumentParser(description="dcnv2_mx dist_sync demo worker")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import mxnet as mx

    import dcnv2_mx  # noqa: F401

    kvstore = mx.kv.create("dist_sync")
    net = train(args.steps, kvstore, log=lambda step, loss: print(
        f"worker {kvstore.rank}/{kvstore.num_workers} step {step}: loss {loss:.6f}", flush=True))
    np.savez(os.path.join(args.out, f"worker{kvstore.rank}.npz"), *parameters(net))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
