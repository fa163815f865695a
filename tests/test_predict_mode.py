"""--mode=predict: closed-form DGD/ATC/CTA predictions on a launcher setting track real training."""

import json

import pytest

from spark_tpu import simulator


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
