"""Checkpoint and resume (issue 7): SIGKILL mid-run and resume is bit-identical; corrupt, mismatched
and missing checkpoints; divergence keeps the last good one."""

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from spark_tpu import checkpoint, simulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [
    "--dataset=digits", "--clients=8", "--samples_per_client=20", "--rounds=5", "--degree=3",
    "--graph_pool=4", "--horizons=4,8", "--local_eval_samples=100", "--devices=2",
]
ALGORITHMS = ("ntk_dfl", "spark", "dfedavgm")
TINY = dict(
    dataset="digits", clients=8, samples_per_client=20, rounds=4, degree=3, graph_pool=4,
    local_eval_samples=100, horizons=(4, 8), devices=2, algorithm="dgd",
)


def launcher(args, out_dir, cache, **popen):
    """``python -m launch_tpu.main`` with a shared persistent compilation cache (speed only)."""
    env = dict(
        os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    cmd = [sys.executable, "-m", "launch_tpu.main", *args, f"--output_dir={out_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def committed_steps(out_dir) -> list[int]:
    path = os.path.join(out_dir, "ckpt")
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def run_and_kill(args, out_dir, cache, at_least=2):
    """Starts a launcher run and SIGKILLs it once a checkpoint for a round ≥ ``at_least`` is
    committed, before the run finishes. Returns the committed rounds at the kill."""
    proc = launcher(args, out_dir, cache)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if [s for s in committed_steps(out_dir) if s >= at_least]:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    rc, _, err = finish(proc)
    return rc, committed_steps(out_dir), err


def read_json(path):
    with open(path) as f:
        return json.load(f)


def metrics_without_seconds(out_dir):
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def kill_resume(tmp_path_factory):
    """For every algorithm: an uninterrupted run, and a run SIGKILLed after a checkpoint at round
    ≥ 2 then resumed, all through the launcher with --checkpoint_every=1 on 2 devices."""
    root = tmp_path_factory.mktemp("kill_resume")
    cache = root / "jax_cache"
    results = {}
    for algo in ALGORITHMS:
        ntk = algo in ("ntk_dfl", "spark")
        launch = [a for a in LAUNCH if ntk or not a.startswith("--horizons")]
        args = launch + [f"--algorithm={algo}", "--checkpoint_every=1"]  # (dfedavgm refuses them)
        ref_dir, run_dir = root / f"{algo}_ref", root / f"{algo}_killed"
        ref = launcher(args, ref_dir, cache)  # runs beside the one that is killed
        for _ in range(3):  # a run that finished before the kill landed proves nothing: retry
            shutil.rmtree(run_dir, ignore_errors=True)
            killed_rc, at_kill, kill_err = run_and_kill(args, run_dir, cache)
            if killed_rc == -signal.SIGKILL:
                break
        ref_result = finish(ref)
        resumed = finish(launcher(args + ["--resume"], run_dir, cache))
        results[algo] = dict(
            ref_dir=ref_dir, run_dir=run_dir, ref=ref_result, killed_rc=killed_rc,
            at_kill=at_kill, kill_err=kill_err, resumed=resumed,
        )
    results["cache"] = cache
    return results


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sigkill_and_resume_is_bit_identical(kill_resume, algorithm):
    r = kill_resume[algorithm]
    assert r["ref"][0] == 0, r["ref"][2][-3000:]
    assert r["killed_rc"] == -signal.SIGKILL, r["kill_err"][-3000:]
    assert max(r["at_kill"]) >= 2 and max(r["at_kill"]) < 5, r["at_kill"]
    rc, _, err = r["resumed"]
    assert rc == 0, err[-3000:]
    step = int(re.search(r"continuing from the checkpoint at round (\d+)", err).group(1))
    assert 2 <= step < 5
    ref, resumed = metrics_without_seconds(r["ref_dir"]), metrics_without_seconds(r["run_dir"])
    assert [row["round"] for row in resumed] == ["1", "2", "3", "4", "5"]
    assert resumed == ref
    summaries = [read_json(os.path.join(d, "summary.json")) for d in (r["ref_dir"], r["run_dir"])]
    for key in ("final", "horizon_histogram", "best_aggregated_acc"):
        assert summaries[0][key] == summaries[1][key], key


def test_launcher_rejects_mismatched_resume(kill_resume):
    """Changing flags that define the state stops the resume, listing every differing flag."""
    args = [a for a in LAUNCH if not a.startswith(("--clients", "--horizons"))]  # dgd: no τ
    args += ["--algorithm=dgd", "--clients=10", "--resume"]
    rc, _, err = finish(launcher(args, kill_resume["ntk_dfl"]["run_dir"], kill_resume["cache"]))
    assert rc != 0
    assert "--algorithm: saved 'ntk_dfl', now 'dgd'" in err
    assert "--clients: saved 8, now 10" in err


# In-process tests (Config and run_with_checkpoints directly; 2 of the 8 test devices).


def _run(workdir, resume=False, overwrite=False, **kw):
    cfg = simulator.Config(**{**TINY, **kw})
    return checkpoint.run_with_checkpoints(
        cfg, str(workdir), resume=resume, overwrite=overwrite, progress=False)


def _rows(workdir):
    return metrics_without_seconds(str(workdir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-round dgd run, checkpointed every round and keeping all of them."""
    out = tmp_path_factory.mktemp("reference")
    _run(out, checkpoint_every=1, keep_checkpoints=4)
    return out


def _copy(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def _resume_messages(caplog):
    return " ".join(r.getMessage() for r in caplog.records if "--resume" in r.getMessage())


def test_checkpoint_holds_state_round_rows_and_flags(reference):
    assert committed_steps(reference) == [1, 2, 3, 4]
    cfg = simulator.Config(**TINY)
    sim = simulator.Simulation(cfg)
    hooks = checkpoint.CheckpointHooks(cfg, str(reference), resume=True)
    try:
        rows = hooks.start(sim, [])
    finally:
        hooks.close()
    assert hooks.restored_from == 4 and int(sim.round) == 4 and len(rows) == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(sim.state))


def test_saves_at_multiples_of_checkpoint_every_and_at_the_end(tmp_path):
    _run(tmp_path, rounds=5, eval_every=2, checkpoint_every=2, keep_checkpoints=5)
    assert committed_steps(tmp_path) == [2, 4, 5]


@pytest.mark.parametrize("flags, message", [
    (dict(eval_every=2, checkpoint_every=3), "--checkpoint_every=3 with --eval_every=2"),
    (dict(checkpoint_every=-1), "--checkpoint_every=-1: must be ≥ 0"),
    (dict(keep_checkpoints=0), "--keep_checkpoints=0: must be ≥ 1"),
])
def test_bad_checkpoint_flags_are_rejected(tmp_path, flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _run(tmp_path, **flags)


def test_resume_continues_without_gaps_or_duplicates(reference, tmp_path):
    """Resuming from round 2 of the reference and from its end with more --rounds."""
    out = _copy(reference, tmp_path)
    for step in (3, 4):
        shutil.rmtree(out / "ckpt" / str(step))
    _run(out, resume=True, checkpoint_every=1, keep_checkpoints=4)
    assert _rows(out) == _rows(reference)
    _run(out, resume=True, rounds=6, checkpoint_every=1)
    assert [r["round"] for r in _rows(out)] == [str(k) for k in range(1, 7)]
    assert _rows(out)[:4] == _rows(reference)


@pytest.mark.parametrize("part", ["state", "meta"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path, caplog, part):
    out = _copy(reference, tmp_path)
    for root, _, files in os.walk(out / "ckpt" / "4" / part):
        for name in files:
            if not name.endswith(".txt"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(max(0, os.path.getsize(f.name) // 2 - 1))
    with caplog.at_level(logging.WARNING):
        _run(out, resume=True, checkpoint_every=1, keep_checkpoints=4)
    text = _resume_messages(caplog)
    assert "checkpoint at round 4" in text and "corrupt or truncated" in text
    assert "continuing from the checkpoint at round 3" in text
    assert (out / "ckpt_corrupt" / "4").is_dir()
    assert _rows(out) == _rows(reference)


def test_every_checkpoint_corrupt_is_an_error(reference, tmp_path):
    out = _copy(reference, tmp_path)
    for step in committed_steps(out):
        for root, _, files in os.walk(out / "ckpt" / str(step)):
            for name in files:
                open(os.path.join(root, name), "wb").close()
    with pytest.raises(ValueError, match="no readable checkpoint"):
        _run(out, resume=True)


def test_mismatched_resume_lists_the_differing_flags(reference, tmp_path):
    out = _copy(reference, tmp_path)
    with pytest.raises(checkpoint.ResumeError) as e:
        _run(out, resume=True, model="ntk_mlp", partition="iid")
    assert "--model: saved 'mlp', now 'ntk_mlp'" in str(e.value)
    assert "--partition: saved 'dirichlet', now 'iid'" in str(e.value)


def test_resume_on_another_client_layout_is_refused(reference, tmp_path):
    """Saved state is in mesh-position order; a different --mesh or topology may place clients
    elsewhere (a torus tiles a 2-D mesh), so resuming would hand clients other clients' models."""
    out = _copy(reference, tmp_path)
    with pytest.raises(checkpoint.ResumeError) as e:
        _run(out, resume=True, mesh="flat", topology="torus")
    assert "--mesh: saved 'auto', now 'flat'" in str(e.value)
    assert "--topology: saved" in str(e.value)


def test_resume_with_other_trajectory_flags_warns_and_continues(reference, tmp_path, caplog):
    out = _copy(reference, tmp_path)
    with caplog.at_level(logging.WARNING):
        _run(out, resume=True, rounds=5, lr=0.05)
    assert "--lr: saved None, now 0.05" in _resume_messages(caplog)
    assert len(_rows(out)) == 5


def test_resume_past_the_requested_rounds_is_an_error(reference, tmp_path):
    out = _copy(reference, tmp_path)
    with pytest.raises(checkpoint.ResumeError, match=r"--rounds=3: .* already at round 4"):
        _run(out, resume=True, rounds=3)


def test_resume_without_checkpoint_starts_fresh_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, resume=True, rounds=2)
    assert "no checkpoint" in _resume_messages(caplog)
    assert "starting a fresh run" in _resume_messages(caplog)
    assert len(_rows(tmp_path)) == 2


def test_fresh_run_into_a_checkpointed_directory_is_refused(reference, tmp_path):
    out = _copy(reference, tmp_path)
    for step in (3, 4):
        shutil.rmtree(out / "ckpt" / str(step))
    with pytest.raises(ValueError, match="already holds checkpoints .* pass --resume"):
        _run(out)


def test_a_finished_run_says_it_is_finished_and_overwrite_replaces_it(reference, tmp_path):
    out = _copy(reference, tmp_path)
    with pytest.raises(ValueError, match="holds a finished run .*--overwrite"):
        _run(out)
    _run(out, overwrite=True, rounds=2)
    assert committed_steps(out) == [2]
    assert _rows(out) == _rows(reference)[:2]
    with pytest.raises(ValueError, match="--resume and --overwrite"):
        _run(out, resume=True, overwrite=True)


def test_a_bad_flag_leaves_no_checkpoint_folder(tmp_path):
    """Flag checks run before the data loads, and ckpt/ is created by the first save only."""
    with pytest.raises(ValueError, match="--degree=5 with --clients=7"):
        _run(tmp_path, degree=5, clients=7)
    assert not (tmp_path / "ckpt").exists()


class SlowJsonWrites:
    """Holds each checkpoint's JSON write in Orbax's background thread until the run has asked
    for the next save (or closed), i.e. until the metric rows have grown: a deterministic stand-in
    for a loaded machine on which the write lands late."""

    def __init__(self, monkeypatch):
        self.requests = 0  # after_chunk calls so far
        self.cond = threading.Condition()
        original_save = ocp.JsonCheckpointHandler._save_fn
        hooks = checkpoint.CheckpointHooks
        original_after, original_close = hooks.after_chunk, hooks.close
        slow = self

        async def save_fn(handler, x, directory):
            step = int(directory.parent.name.split(".")[0])
            with slow.cond:
                assert slow.cond.wait_for(lambda: slow.requests > step, timeout=60)
            await original_save(handler, x, directory)

        def after_chunk(hooks_self, sim, rows):
            slow.release(int(rows[-1]["round"]))
            original_after(hooks_self, sim, rows)

        def close(hooks_self):
            slow.release(10**9)
            original_close(hooks_self)

        monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)
        monkeypatch.setattr(hooks, "after_chunk", after_chunk)
        monkeypatch.setattr(hooks, "close", close)

    def release(self, requests):
        with self.cond:
            self.requests = requests
            self.cond.notify_all()


def test_a_late_metadata_write_saves_the_rows_of_its_own_round(tmp_path, monkeypatch):
    """The metadata of an asynchronous save is a snapshot: rows appended while the write is
    pending do not reach it (they did, and a resume then moved a good checkpoint aside)."""
    SlowJsonWrites(monkeypatch)
    _run(tmp_path, checkpoint_every=1, keep_checkpoints=4)
    for step in committed_steps(tmp_path):
        meta = read_json(tmp_path / "ckpt" / str(step) / "meta" / "metadata")
        assert [r["round"] for r in meta["rows"]] == list(range(1, step + 1)), step


def test_resume_after_late_writes_uses_the_latest_checkpoint(reference, tmp_path, monkeypatch,
                                                             caplog):
    SlowJsonWrites(monkeypatch)
    out = tmp_path / "run"
    _run(out, checkpoint_every=1, keep_checkpoints=4)
    shutil.rmtree(out / "ckpt" / "4")  # as if killed before round 4 was saved
    with caplog.at_level(logging.WARNING):
        _run(out, resume=True, checkpoint_every=1, keep_checkpoints=4)
    text = _resume_messages(caplog)
    assert "continuing from the checkpoint at round 3" in text, text
    assert "corrupt" not in text and not (out / "ckpt_corrupt").exists()
    assert _rows(out) == _rows(reference)


def test_inconsistent_checkpoint_warning_says_what_disagrees(reference, tmp_path, caplog):
    out = _copy(reference, tmp_path)
    path = out / "ckpt" / "3" / "meta" / "metadata"
    meta = read_json(path)
    meta["rows"].append(dict(meta["rows"][-1], round=4))
    path.write_text(json.dumps(meta))
    shutil.rmtree(out / "ckpt" / "4")
    with caplog.at_level(logging.WARNING):
        _run(out, resume=True, checkpoint_every=1, keep_checkpoints=4)
    text = _resume_messages(caplog)
    assert "checkpoint at round 3" in text
    assert "the metadata holds 4 metric rows (rounds 1–4), expected rounds 1–3" in text
    assert "continuing from the checkpoint at round 2" in text


def test_divergence_names_round_and_client_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(simulator.DivergenceError) as e:
        _run(tmp_path, rounds=5, lr=1e10, checkpoint_every=1, keep_checkpoints=5)
    message = str(e.value)
    assert re.search(r"Round 3: client \d+ has a non-finite model", message)
    assert "Last good checkpoint: round 2" in message
    assert committed_steps(tmp_path) == [1, 2]
    cfg = simulator.Config(**{**TINY, "rounds": 5, "lr": 1e10})
    sim = simulator.Simulation(cfg)
    hooks = checkpoint.CheckpointHooks(cfg, str(tmp_path), resume=True)
    try:
        hooks.start(sim, [])
    finally:
        hooks.close()
    assert int(sim.round) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(sim.state))
