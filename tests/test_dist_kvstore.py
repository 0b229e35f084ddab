"""Training on MXNet's dist_sync kvstore: a scheduler, a server and two workers on 127.0.0.1
(python -m dcnv2_mx dist-demo) train Conv2D + our DCNv2 block + our modulated RoI head, each
worker on half the batch, to the parameters of one process on the whole batch; every process is
time-limited and cleaned up."""
import os

import mxnet as mx
import numpy as np
import pytest

from dcnv2_mx.tools import cli
from dcnv2_mx.tools import dist_train

pytestmark = pytest.mark.skipif(not mx.runtime.Features().is_enabled("DIST_KVSTORE"),
                                reason="this MXNet build has no distributed kvstore")


def child_processes():
    """Process ids whose parent is this process (Linux /proc). Compare with a snapshot taken
    before the call under test: earlier tests may have left long-lived children of their own
    (multiprocessing's resource tracker, started by the benchmark's memory child, lives as long
    as the test process)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == os.getpid():
                children.append(int(entry))
    return children


def test_two_workers_train_like_one_process(tmp_path, capsys):
    steps = 3
    before = set(child_processes())
    assert cli.main(["dist-demo", "--steps", str(steps), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out, out
    assert set(child_processes()) <= before

    reference = dist_train.parameters(dist_train.train(steps))
    initial = dist_train.parameters(dist_train.build_network())
    names = list(dist_train.build_network().collect_params())
    for rank in range(2):
        with np.load(tmp_path / f"worker{rank}.npz") as saved:
            got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        assert len(got) == len(reference)
        for name, g, want in zip(names, got, reference):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # Training moved every parameter, the offset and RoI-offset branches included.
    moved = {n for n, a, b in zip(names, initial, reference) if np.abs(a - b).max() > 1e-6}
    assert moved == set(names), set(names) - moved
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert logs.count("step 2: loss") == 2, logs


def test_processes_are_killed_at_the_time_limit(tmp_path):
    before = set(child_processes())
    with pytest.raises(RuntimeError, match="did not finish within 2 s"):
        dist_train.launch_local(str(tmp_path), num_workers=2, steps=1, timeout=2)
    assert set(child_processes()) <= before
