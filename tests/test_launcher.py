"""The launcher as a new user meets it: --help, a quiet terminal with a log file, a finished run
that says so, --overwrite, and the summary's line for a missed target."""

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from launch_tpu import _flags, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset=digits", "--clients=8", "--samples_per_client=20", "--rounds=2", "--degree=3",
    "--graph_pool=4", "--local_eval_samples=100", "--devices=2",
    "--algorithm=dgd",
]


def launch(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "launch_tpu.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_every_project_flag_is_in_exactly_one_help_group():
    ours = {f.name for f in flags.FLAGS.get_flags_for_module(_flags)}
    grouped = [name for names in _flags.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(ours)


def test_help_lists_the_project_flags_by_group_and_the_presets():
    p = launch("--help", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    text = p.stdout
    for group in ("run:", "data:", "topology:", "algorithm:", "NTK solver:", "SPARK:", "outputs:"):
        assert f"\n{group}\n" in text
    assert "--algorithm (default ntk_dfl)" in text and "--overwrite" in text
    assert "--flagfile=experiments/presets/quickstart.flags" in text
    assert "--logtostderr" not in text and "--jax_" not in text  # absl's stay in --helpfull


def test_missed_target_says_which_and_the_best_accuracy():
    summary = dict(rounds_to_target=None, target_accuracy=0.85, best_aggregated_acc=0.7812,
                   config=dict(rounds=10))
    assert main.target_line(summary) == (
        "not reached: --target_accuracy=0.85 in 10 rounds (best aggregated accuracy 0.7812)")
    assert main.target_line(dict(summary, rounds_to_target=7)) == 7


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """A tiny run, the same command again, then again with --overwrite."""
    out = tmp_path_factory.mktemp("launcher") / "run"
    args = [*TINY, f"--output_dir={out}"]
    return out, launch(*args), launch(*args), launch(*args, "--overwrite")


def test_the_terminal_shows_progress_evaluations_and_summary_not_library_logs(twice):
    out, first, _, _ = twice
    assert first.returncode == 0, first.stderr[-3000:]
    assert not re.search(r"^[IW]\d{4} ", first.stderr, re.M), first.stderr[-3000:]  # absl lines
    assert "round 1: aggregated accuracy" in first.stderr
    assert "round 2: aggregated accuracy" in first.stderr
    assert '"rounds_to_target": "not reached: --target_accuracy=0.85 in 2 rounds' in first.stdout
    log = (out / "log.txt").read_text()
    assert "config: Config(" in log and "CheckpointManager" in log


def test_a_finished_run_says_so_and_overwrite_replaces_it(twice):
    out, first, second, third = twice
    assert second.returncode != 0
    assert "holds a finished run (2 rounds, checkpoint at round 2)" in second.stderr
    assert "--overwrite" in second.stderr and "Traceback" not in second.stderr
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "metrics.csv").read_text().count("\n") == 3
