"""--mode=predict: closed-form DGD/ATC/CTA predictions on a launcher setting track real training."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spark_tpu import simulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("algorithm", ["dgd", "cta"])
def test_predict_mode_tracks_training(tmp_path, algorithm):
    cfg = simulator.Config(
        algorithm=algorithm, dataset="two_moons", model="ntk_mlp", clients=4,
        samples_per_client=40, topology="ring", time_varying=False, mixing="metropolis",
        partition="iid", lr=0.05, rounds=40, devices=1,
    )
    s = simulator.predict(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert saved["max_relative_loss_error"]["discrete"] < 1e-2
    observed = saved["loss_observed"]
    assert observed[-1][0] < observed[0][0]  # training moved, so the check is not vacuous
    assert (tmp_path / "prediction.png").exists() and s["rank"] > 0


def test_predict_mode_rejects_other_algorithms(tmp_path):
    with pytest.raises(ValueError, match="--mode=predict: --algorithm=ntk_dfl"):
        simulator.predict(simulator.Config(algorithm="ntk_dfl", dataset="two_moons"), str(tmp_path))


def test_predict_mode_computes_in_float64(tmp_path):
    cfg = simulator.Config(
        algorithm="dgd", dataset="two_moons", model="linear", clients=4, samples_per_client=40,
        topology="ring", time_varying=False, mixing="metropolis", partition="iid", lr=0.05,
        rounds=20, devices=1,
    )
    s = simulator.predict(cfg, str(tmp_path))
    for key in ("loss_predicted_discrete", "loss_predicted_flow", "loss_observed"):
        assert np.asarray(s[key]).dtype == np.float64, key
    assert s["max_relative_loss_error"]["discrete"] < 1e-12  # an affine model: round-off only


def test_predict_mode_through_the_launcher_is_float64_to_round_off(tmp_path):
    """Outside the tests' global x64 the launcher must still compute in float64: the affine
    model's discrete prediction then matches training to round-off (float32 gives ~1e-7), with no
    truncation warning."""
    cmd = [
        sys.executable, "-m", "launch_tpu.main", "--mode=predict", "--algorithm=dgd",
        "--dataset=two_moons", "--model=linear", "--clients=4", "--samples_per_client=40",
        "--topology=ring", "--notime_varying", "--mixing=metropolis", "--partition=iid",
        "--lr=0.05", "--rounds=40", "--devices=1", f"--output_dir={tmp_path}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_ENABLE_X64", None)
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "UserWarning" not in p.stderr and "truncated to dtype float32" not in p.stderr
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert saved["max_relative_loss_error"]["discrete"] < 1e-12
    assert saved["loss_observed"][-1][0] < 0.5 * saved["loss_observed"][0][0]
    assert (tmp_path / "prediction.png").stat().st_size > 10_000
