"""Multi-host on one CPU machine: 2 processes x 4 devices give the metrics of 1 x 8 (issue 8)."""

import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ARGS = [
    "--algorithm=ntk_dfl", "--dataset=digits", "--clients=12", "--samples_per_client=16",
    "--rounds=2", "--degree=3", "--graph_pool=4", "--horizons=4,8", "--local_eval_samples=100",
    "--devices=8",
]


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _metrics(path):
    with open(os.path.join(path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(v or "nan") for k, v in r.items() if k != "seconds"] for r in rows])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "launch_tpu.main", *ARGS]
    one = tmp_path / "one"
    subprocess.run([*cmd, f"--output_dir={one}"], check=True, env=env, capture_output=True)
    two = tmp_path / "two"
    addr = f"localhost:{_port()}"
    procs = [
        subprocess.Popen(
            [*cmd, f"--output_dir={two}", f"--coordinator_address={addr}", "--num_processes=2",
             f"--process_id={i}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    np.testing.assert_allclose(_metrics(two), _metrics(one), rtol=1e-5, atol=1e-6)
