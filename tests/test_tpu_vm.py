"""Tests for `launch_tpu.tpu_vm`: the exact gcloud argv of every command, flag validation, and
the CLI in a subprocess (dry run, missing gcloud, a stand-in gcloud that records its argv, and
gcloud's own argument parser where the Google Cloud CLI is installed).

Expected argv are written as text split on spaces; only `--command=` scripts contain spaces."""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from launch_tpu import tpu_vm

REPO = pathlib.Path(tpu_vm.__file__).resolve().parents[1]
VM = "gcloud compute tpus tpu-vm"
QR = "gcloud compute tpus queued-resources"
AT = "--zone=us-central2-b --project=my-proj"  # where the default test TPU is


@pytest.fixture
def repo_root(tmp_path: pathlib.Path) -> pathlib.Path:
    """A stand-in checkout with one preset, so tests do not depend on the real presets."""
    root = tmp_path / "checkout"
    (root / ".git").mkdir(parents=True)
    (root / "experiments" / "presets").mkdir(parents=True)
    (root / "experiments" / "presets" / "ring.flags").write_text("--rounds=2\n")
    return root


def settings(**overrides) -> tpu_vm.Settings:
    base = {"name": "spark-tpu", "zone": "us-central2-b", "project": "my-proj"}
    return tpu_vm.Settings(**(base | overrides))


def ssh_all(script: str) -> list[str]:
    return f"{VM} ssh spark-tpu {AT} --worker=all".split() + [f"--command={script}"]


def remote_script(argv: list[str]) -> str:
    (command,) = [word for word in argv if word.startswith("--command=")]
    return command.removeprefix("--command=")


# Pure builders and plans: exact argv.


@pytest.mark.parametrize(
    "accelerator_type, pod_slice, runtime",
    [
        ("v4-8", False, "tpu-ubuntu2204-base"),
        ("v4-32", True, "tpu-ubuntu2204-base"),
        ("v3-32", True, "tpu-ubuntu2204-base"),
        ("v5p-8", False, "v2-alpha-tpuv5"),
        ("v5litepod-1", False, "v2-alpha-tpuv5-lite"),
        ("v5litepod-8", False, "v2-alpha-tpuv5-lite"),
        ("v5litepod-16", True, "v2-alpha-tpuv5-lite"),
        ("v5litepod-32", True, "v2-alpha-tpuv5-lite"),
        ("v6e-8", False, "v2-alpha-tpuv6e"),
        ("v6e-64", True, "v2-alpha-tpuv6e"),
    ],
)
def test_accelerator_types(accelerator_type, pod_slice, runtime):
    assert tpu_vm.is_pod_slice(accelerator_type) is pod_slice
    assert tpu_vm.default_runtime_version(accelerator_type) == runtime


def test_create_single_host_builder():
    tpu = tpu_vm.Tpu("spark-tpu", "us-west4-a")
    assert tpu_vm.create_commands(tpu, "v5litepod-8", "v2-alpha-tpuv5-lite") == [
        f"{VM} create spark-tpu --zone=us-west4-a --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite".split()
    ]


@pytest.mark.parametrize("provisioning", ["spot", "preemptible"])
def test_create_pod_slice_plan(provisioning):
    commands = tpu_vm.plan("create", settings(accelerator_type="v4-32", **{provisioning: True}))
    assert commands == [
        f"{VM} create spark-tpu {AT} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base "
        f"--{provisioning}".split()
    ]


def test_create_queued_resource_and_runtime_override():
    s = settings(accelerator_type="v5litepod-32", queued=True, spot=True, runtime_version="rt-x")
    assert tpu_vm.plan("create", s) == [
        f"{QR} create spark-tpu --node-id=spark-tpu {AT} --accelerator-type=v5litepod-32 "
        "--runtime-version=rt-x --spot".split()
    ]


@pytest.mark.parametrize(
    "queued, expected",
    [(False, f"{VM} delete spark-tpu {AT} --quiet"),
     (True, f"{QR} delete spark-tpu {AT} --force --quiet")],
)  # fmt: skip
def test_delete(queued, expected):
    assert tpu_vm.plan("delete", settings(queued=queued)) == [expected.split()]


def test_setup_ships_committed_tree_to_all_workers(repo_root):
    archive, scp, ssh = tpu_vm.plan("setup", settings(repo_root=str(repo_root), git_ref="v1"))
    tarball = archive[-2].removeprefix("--output=")
    git = f"git -C {repo_root} archive --format=tar.gz --prefix=spark_tpu/ --output={tarball} v1"
    assert archive == git.split()
    assert scp == f"{VM} scp {tarball} spark-tpu:spark_tpu.tar.gz {AT} --worker=all".split()
    assert ssh[:-1] == ssh_all("")[:-1]
    steps = remote_script(ssh).split(" && ")
    assert steps[:2] == ["rm -rf $HOME/spark_tpu", "tar -xzf $HOME/spark_tpu.tar.gz -C $HOME"]
    assert "$HOME/.local/bin/uv venv --python 3.11 $HOME/spark_tpu_venv" in steps
    assert shlex.split(steps[-2])[-4:] == ["-e", "$HOME/spark_tpu", "jax[tpu]", "gcsfs"]


def test_stage_data_uploads_then_copies_to_every_worker(tmp_path):
    s = settings(bucket="gs://my-bucket/spark/", local_data_dir=str(tmp_path))
    assert tpu_vm.plan("stage_data", s) == [
        f"gcloud storage rsync --recursive {tmp_path} gs://my-bucket/spark/tfds "
        "--project=my-proj".split(),
        ssh_all(
            "mkdir -p $HOME/tensorflow_datasets && gcloud storage rsync --recursive "
            "gs://my-bucket/spark/tfds $HOME/tensorflow_datasets"
        ),
    ]


def test_run_in_background_on_all_workers(repo_root):
    extra = "--rounds=10 --note='a b'"
    s = settings(repo_root=str(repo_root), preset="ring", bucket="my-bucket", extra_flags=extra)
    assert tpu_vm.plan("run", s) == [
        ssh_all(
            "cd $HOME/spark_tpu && mkdir -p $HOME/spark_tpu_logs && nohup "
            "$HOME/spark_tpu_venv/bin/python -m launch_tpu.main "
            "--flagfile=experiments/presets/ring.flags --output_dir=gs://my-bucket/runs/ring "
            "--data_dir=$HOME/tensorflow_datasets --rounds=10 '--note=a b' "
            "> $HOME/spark_tpu_logs/ring.log 2>&1 < /dev/null &"
        )
    ]


def test_run_single_host_without_bucket_writes_to_worker_disk(repo_root):
    s = settings(repo_root=str(repo_root), preset="ring.flags", run_name="r1",
                 accelerator_type="v5litepod-8", background=False, pass_data_dir=False)  # fmt: skip
    (argv,) = tpu_vm.plan("run", s)
    assert remote_script(argv) == (
        "cd $HOME/spark_tpu && mkdir -p $HOME/spark_tpu_logs && "
        "$HOME/spark_tpu_venv/bin/python -m launch_tpu.main "
        "--flagfile=experiments/presets/ring.flags --output_dir=$HOME/spark_tpu_runs/r1 "
        "2>&1 | tee $HOME/spark_tpu_logs/r1.log"
    )


def test_fetch_from_bucket_and_from_worker_0():
    log = f"{VM} scp spark-tpu:spark_tpu_logs/r1.log out/r1.worker0.log {AT} --worker=0".split()
    from_bucket = settings(run_name="r1", bucket="b-1", results_dir="out")
    assert tpu_vm.plan("fetch", from_bucket) == [
        shlex.split("gcloud storage rsync --recursive gs://b-1/runs/r1 out/r1 --project=my-proj"),
        log,
    ]
    single_host = settings(run_name="r1", accelerator_type="v4-8", results_dir="out")
    assert tpu_vm.plan("fetch", single_host) == [
        f"{VM} scp spark-tpu:spark_tpu_runs/r1 out --recurse {AT} --worker=0".split(),
        log,
    ]


def test_logs_tail_every_worker():
    expected = [ssh_all("tail -n 50 $HOME/spark_tpu_logs/ring.log")]
    assert tpu_vm.plan("logs", settings(preset="ring")) == expected


def all_plans(repo_root, data_dir, **overrides):
    s = settings(accelerator_type="v4-32", repo_root=str(repo_root), preset="ring",
                 bucket="b-1", local_data_dir=str(data_dir), **overrides)  # fmt: skip
    return {command: tpu_vm.plan(command, s) for command in tpu_vm.COMMANDS}


def test_zone_project_and_workers_propagate(repo_root, tmp_path):
    for command, commands in all_plans(repo_root, tmp_path).items():
        for argv in commands:
            line = shlex.join(argv)
            if argv[0] == "gcloud":
                assert "--project=my-proj" in argv, line
            if line.startswith("gcloud compute"):
                assert "--zone=us-central2-b" in argv, line
            if line.startswith((f"{VM} ssh", f"{VM} scp")):
                assert ("--worker=0" if command == "fetch" else "--worker=all") in argv, line
    no_project = all_plans(repo_root, tmp_path, project=None)
    assert not any(w.startswith("--project") for c in no_project.values() for a in c for w in a)


# Validation: one clear error naming the flag, its value and what is allowed.


@pytest.mark.parametrize(
    "command, overrides, message",
    [
        ("create", {}, "--accelerator_type is unset"),
        ("create", {"accelerator_type": "v9-8"}, "--accelerator_type='v9-8' is invalid"),
        ("create", {"accelerator_type": "v4-12"}, "v5litepod-8 or v4-8 (one host)"),
        ("create", {"accelerator_type": "v4-8", "queued": True, "preemptible": True},
         "--preemptible is set: queued resources take --spot"),
        ("create", {"accelerator_type": "v4-8", "spot": True, "preemptible": True},
         "choose one of --spot and --preemptible"),
        ("delete", {"name": "Spark_TPU"}, "--name='Spark_TPU' is invalid"),
        ("delete", {"zone": None}, "--zone is unset"),
        ("delete", {"project": "X"}, "--project='X' is invalid"),
        ("stage_data", {"local_data_dir": "/nonexistent"}, "--bucket is unset"),
        ("stage_data", {"bucket": "b-1", "local_data_dir": "/nonexistent"},
         "--local_data_dir='/nonexistent' is invalid"),
        ("run", {"preset": "nope", "bucket": "b-1"}, "--preset='nope' is invalid"),
        ("run", {"preset": "ring"}, "--bucket is unset: the workers of a pod slice"),
        ("run", {"preset": "ring", "accelerator_type": "v4-32"}, "--bucket is unset"),
        ("run", {"preset": "ring", "bucket": "Bad_Bucket"}, "--bucket='Bad_Bucket' is invalid"),
        ("run", {"preset": "ring", "bucket": "b-1", "extra_flags": "--a='b"}, "balanced quotes"),
        ("fetch", {"bucket": "b-1"}, "--run_name is unset"),
        ("logs", {"preset": "a/b"}, "--preset='a/b' is invalid"),
    ],
)  # fmt: skip
def test_validation_errors(repo_root, command, overrides, message):
    with pytest.raises(tpu_vm.FlagError) as error:
        tpu_vm.plan(command, settings(repo_root=str(repo_root), **overrides))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_preset_lists_known_ones(repo_root):
    with pytest.raises(tpu_vm.FlagError, match="one of ring$"):
        tpu_vm.plan("run", settings(repo_root=str(repo_root), preset="rign", bucket="b-1"))


# The CLI in a subprocess.


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "launch_tpu.tpu_vm", *args]
    return subprocess.run(argv, check=False, cwd=REPO, env=env, capture_output=True, text=True)


def test_cli_dry_run_prints_each_plan(repo_root, tmp_path):
    flags = (
        f"--name=spark-tpu {AT} --accelerator_type=v4-32 --repo_root={repo_root} --preset=ring "
        f"--bucket=b-1 --local_data_dir={tmp_path} --dry_run"
    ).split()
    for command, commands in all_plans(repo_root, tmp_path).items():
        result = cli(command, *flags)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [shlex.join(argv) for argv in commands]


def test_cli_dry_run_exact_text():
    args = "create --name=t1 --zone=us-west4-a --accelerator_type=v5litepod-8 --spot --dry_run"
    result = cli(*args.split())
    assert result.stdout == (
        "gcloud compute tpus tpu-vm create t1 --zone=us-west4-a "
        "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot\n"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ("create --accelerator_type=v4_8", "--accelerator_type='v4_8' is invalid"),
        ("stage_data --local_data_dir=/tmp", "--bucket is unset"),
        ("run --preset=no_such_preset --bucket=b-1", "--preset='no_such_preset' is invalid"),
        ("reboot", "expected one command, one of create, setup"),
        ("", "got none"),
    ],
)
def test_cli_errors(args, message):
    result = cli(*args.split(), "--name=t1", "--zone=us-west4-a", "--dry_run")
    assert result.returncode != 0
    assert result.stdout == ""
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def fake_gcloud(tmp_path: pathlib.Path, exit_status: int) -> tuple[dict, pathlib.Path]:
    """A PATH whose `gcloud` appends its argv (one word a line) to a file and exits."""
    bin_dir, record = tmp_path / "bin", tmp_path / "argv.txt"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" gcloud "$@" >> {record}\nexit {exit_status}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}/bin{os.pathsep}/usr/bin"}, record


def test_cli_runs_the_planned_commands(tmp_path):
    env, record = fake_gcloud(tmp_path, exit_status=0)
    result = cli("create", "--name=t1", "--zone=us-west4-a", "--accelerator_type=v4-8", env=env)
    assert result.returncode == 0, result.stderr
    s = tpu_vm.Settings(name="t1", zone="us-west4-a", accelerator_type="v4-8")
    assert record.read_text().splitlines() == tpu_vm.plan("create", s)[0]


def test_cli_reports_a_failing_command(tmp_path):
    env, _ = fake_gcloud(tmp_path, exit_status=3)
    result = cli("delete", "--name=t1", "--zone=us-west4-a", env=env)
    assert result.returncode != 0
    assert "failed with exit status 3: gcloud compute tpus tpu-vm delete t1" in result.stderr


def test_cli_without_gcloud_says_how_to_install(tmp_path):
    result = cli(
        "delete", "--name=t1", "--zone=us-west4-a", env=os.environ | {"PATH": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "`gcloud` is not on PATH" in result.stderr
    assert "https://cloud.google.com/sdk/docs/install" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_real_gcloud_parses_every_command(repo_root, tmp_path):
    """gcloud parses its arguments before it looks for credentials, so with an empty config
    directory a well-formed command fails only for want of an account."""
    config = {"CLOUDSDK_CONFIG": str(tmp_path / "config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    plans = all_plans(repo_root, tmp_path) | {
        "create_queued": tpu_vm.plan("create", settings(accelerator_type="v4-8", queued=True)),
        "delete_queued": tpu_vm.plan("delete", settings(queued=True)),
    }
    kinds = {}  # one command of each gcloud group and verb
    for argv in (argv for commands in plans.values() for argv in commands):
        if argv[0] == "gcloud":
            kinds.setdefault(tuple(argv[:5]), argv)
    for argv in kinds.values():
        result = subprocess.run(
            argv, check=False, env=os.environ | config, capture_output=True, text=True
        )
        assert "do not currently have an active account" in result.stderr, (argv, result.stderr)
