"""Cloud TPU launcher: create a TPU VM, install spark_tpu, stage data, run, fetch, delete.

Usage:
  python -m launch_tpu.tpu_vm COMMAND --name=NAME --zone=ZONE [flags] [--dry_run]

Commands:
  create      create a TPU VM, one host (v5litepod-8, v4-8) or a pod slice (v4-32, ...)
  setup       ship the committed repo to every worker and install it with jax[tpu]
  stage_data  upload a prepared tfds data directory to --bucket, copy it onto every worker
  run         start `python -m launch_tpu.main --flagfile=experiments/presets/PRESET.flags`
              on every worker at once, in the background, logging to ~/spark_tpu_logs/RUN.log
  logs        print the tail of the run's log on every worker
  fetch       copy the run's output directory (and worker 0's log) to --results_dir/RUN
  delete      delete the TPU VM (or its queued resource)

With --dry_run the exact gcloud commands are printed, one per line, and nothing runs.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from launch_tpu._gcloud import (
    REMOTE_RUNS,
    Argv,
    Tpu,
    create_commands,
    default_runtime_version,
    delete_commands,
    fetch_commands,
    is_pod_slice,
    logs_commands,
    parse_accelerator_type,
    run_commands,
    setup_commands,
    stage_data_commands,
    train_command,
)

COMMANDS = ("create", "setup", "stage_data", "run", "logs", "fetch", "delete")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GCLOUD_MISSING = (
    "`gcloud` is not on PATH: install the Google Cloud CLI "
    "(https://cloud.google.com/sdk/docs/install), then run `gcloud auth login` and "
    "`gcloud config set project PROJECT`; or pass --dry_run to only print the commands."
)
ACCELERATOR_ALLOWED = (
    "expected GENERATION-SIZE with GENERATION one of v2, v3, v4, v5p, v5litepod, v6e and, "
    "for v2-v5p (TensorCores), SIZE a multiple of 8: e.g. v5litepod-8 or v4-8 (one host), "
    "v5litepod-32 or v4-32 (pod slice)"
)
OUTPUT_ALLOWED = (
    "the workers of a pod slice must write one shared output directory, so pass "
    "--bucket=BUCKET (output goes to gs://BUCKET/runs/RUN); without a bucket, "
    "pass a single-host --accelerator_type (e.g. v5litepod-8) to keep it on worker 0"
)

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_PROJECT = re.compile(r"^[a-z][-a-z0-9.:]{4,61}[a-z0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[-A-Za-z0-9_./]+)?$")
_WORD = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")

flags.DEFINE_string("name", None, "TPU VM name (lowercase letters, digits, hyphens).")
flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b.")
flags.DEFINE_string("project", None, "Google Cloud project; default: gcloud's configured one.")
flags.DEFINE_string("accelerator_type", None, "TPU type, e.g. v5litepod-8, v4-8, v4-32.")
flags.DEFINE_string("runtime_version", None, "TPU software version; default per generation.")
flags.DEFINE_bool("spot", False, "create: a Spot TPU (cheap, preemptible at any time).")
flags.DEFINE_bool("preemptible", False, "create: a preemptible TPU (not with --queued).")
flags.DEFINE_bool("queued", False, "create/delete: go through a queued resource.")
flags.DEFINE_string("bucket", None, "Cloud Storage bucket[/prefix] for data and run outputs.")
flags.DEFINE_string("local_data_dir", None, "stage_data: local tfds data_dir to upload.")
flags.DEFINE_string("preset", None, "run: flagfile name in experiments/presets/ (no .flags).")
flags.DEFINE_string("run_name", None, "Run name for outputs and logs; default: --preset.")
flags.DEFINE_string("extra_flags", "", "run: further flags for launch_tpu.main, one string.")
flags.DEFINE_bool("background", True, "run: nohup in the background (else stream output).")
flags.DEFINE_bool("pass_data_dir", True, "run: pass --data_dir=~/tensorflow_datasets.")
flags.DEFINE_string("results_dir", "tpu_runs", "fetch: local directory for fetched runs.")
flags.DEFINE_string("repo_root", REPO_ROOT, "setup/run: the local checkout to ship.")
flags.DEFINE_string("git_ref", "HEAD", "setup: the commit to ship (`git archive`).")
flags.DEFINE_bool("dry_run", False, "Print the commands, one per line, and run nothing.")

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A flag value that cannot work: the message names the flag, the value and the fix."""

    def __init__(self, flag: str, value: object, allowed: str):
        if value is None or value == "":
            shown = f"--{flag} is unset"
        elif isinstance(value, bool):
            shown = f"--{flag} is set" if value else f"--no{flag} is set"
        else:
            shown = f"--{flag}={value!r} is invalid"
        super().__init__(f"{shown}: {allowed}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flag values, gathered once so `plan` is testable without absl parsing."""

    name: str | None = None
    zone: str | None = None
    project: str | None = None
    accelerator_type: str | None = None
    runtime_version: str | None = None
    spot: bool = False
    preemptible: bool = False
    queued: bool = False
    bucket: str | None = None
    local_data_dir: str | None = None
    preset: str | None = None
    run_name: str | None = None
    extra_flags: str = ""
    background: bool = True
    pass_data_dir: bool = True
    results_dir: str = "tpu_runs"
    repo_root: str = REPO_ROOT
    git_ref: str = "HEAD"

    @classmethod
    def from_flags(cls) -> "Settings":
        return cls(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(cls)})


def _check(ok: bool, flag: str, value: object, allowed: str) -> None:
    if not ok:
        raise FlagError(flag, value, allowed)


def _tpu(s: Settings) -> Tpu:
    _check(
        bool(s.name and _NAME.match(s.name)),
        "name",
        s.name,
        "a TPU name: lowercase letters, digits and hyphens, starting with a letter, "
        "e.g. --name=spark-tpu",
    )
    _check(
        bool(s.zone and _ZONE.match(s.zone)),
        "zone",
        s.zone,
        "a zone with TPUs of your type, e.g. us-central2-b (v4) or us-west4-a (v5e)",
    )
    _check(
        s.project is None or bool(_PROJECT.match(s.project)),
        "project",
        s.project,
        "a project id: lowercase letters, digits and hyphens, e.g. my-project",
    )
    return Tpu(s.name, s.zone, s.project)


def _accelerator_type(s: Settings, *, required: bool) -> str | None:
    if s.accelerator_type is None and not required:
        return None
    try:
        parse_accelerator_type(s.accelerator_type or "")
    except ValueError:
        raise FlagError("accelerator_type", s.accelerator_type, ACCELERATOR_ALLOWED) from None
    return s.accelerator_type


def _bucket_url(s: Settings, why: str) -> str | None:
    """`gs://BUCKET[/PREFIX]` from --bucket (with or without `gs://`), None if unset."""
    if s.bucket is None:
        return None
    bucket = s.bucket.removeprefix("gs://").rstrip("/")
    _check(
        bool(_BUCKET.match(bucket)),
        "bucket",
        s.bucket,
        f"{why}; a bucket name, optionally with a path: e.g. my-bucket or gs://my-bucket/spark",
    )
    return f"gs://{bucket}"


def _run_name(s: Settings) -> str:
    name = s.run_name or s.preset
    flag, value = ("preset", s.preset) if s.preset and not s.run_name else ("run_name", s.run_name)
    _check(
        bool(name and _WORD.match(name)),
        flag,
        value,
        "a run name of letters, digits, '-', '_' and '.', e.g. --run_name=ring_seed0 "
        "(it defaults to --preset)",
    )
    return name


def _preset(s: Settings) -> str:
    presets = os.path.join(s.repo_root, "experiments", "presets")
    preset = (s.preset or "").removesuffix(".flags")
    known = (
        sorted(f[: -len(".flags")] for f in os.listdir(presets) if f.endswith(".flags"))
        if os.path.isdir(presets)
        else []
    )
    exists = bool(_WORD.match(preset)) and os.path.isfile(os.path.join(presets, preset + ".flags"))
    _check(
        exists,
        "preset",
        s.preset,
        f"the name of a flagfile in {presets}: one of {', '.join(known) or '(none yet)'}",
    )
    return preset


def _extra_flags(s: Settings) -> list[str]:
    try:
        return shlex.split(s.extra_flags)
    except ValueError as error:
        raise FlagError(
            "extra_flags",
            s.extra_flags,
            f"shell words with balanced quotes "
            f"({error}), e.g. --extra_flags='--rounds=10 --seed=1'",
        ) from None


def _output_url(s: Settings, run_name: str) -> str | None:
    """The run's `gs://` output directory, or None for worker 0's disk (single host only)."""
    root = _bucket_url(s, "where the run writes its outputs")
    if root is not None:
        return f"{root}/runs/{run_name}"
    accelerator_type = _accelerator_type(s, required=False)
    _check(
        accelerator_type is not None and not is_pod_slice(accelerator_type),
        "bucket",
        s.bucket,
        OUTPUT_ALLOWED,
    )
    return None


def _plan_create(tpu: Tpu, s: Settings) -> list[Argv]:
    accelerator_type = _accelerator_type(s, required=True)
    runtime = s.runtime_version or default_runtime_version(accelerator_type)
    _check(
        not (s.spot and s.preemptible),
        "preemptible",
        True,
        "choose one of --spot and --preemptible (Spot TPUs supersede preemptible ones)",
    )
    _check(
        not (s.queued and s.preemptible),
        "preemptible",
        True,
        "queued resources take --spot, not --preemptible",
    )
    return create_commands(
        tpu, accelerator_type, runtime, spot=s.spot, preemptible=s.preemptible, queued=s.queued
    )


def _plan_setup(tpu: Tpu, s: Settings) -> list[Argv]:
    _check(
        os.path.exists(os.path.join(s.repo_root, ".git")),
        "repo_root",
        s.repo_root,
        "a git checkout of spark_tpu (setup ships it with `git archive`)",
    )
    _check(
        bool(s.git_ref) and not s.git_ref.startswith("-"),
        "git_ref",
        s.git_ref,
        "a commit, branch or tag, e.g. HEAD",
    )
    archive = os.path.join(tempfile.gettempdir(), f"{tpu.name}-spark_tpu.tar.gz")
    return setup_commands(tpu, s.repo_root, archive, s.git_ref)


def _plan_stage_data(tpu: Tpu, s: Settings) -> list[Argv]:
    why = "stage_data uploads the data there"
    root = _bucket_url(s, why)
    _check(root is not None, "bucket", s.bucket, f"{why}: pass e.g. --bucket=my-bucket")
    _check(
        bool(s.local_data_dir) and os.path.isdir(s.local_data_dir),
        "local_data_dir",
        s.local_data_dir,
        "an existing tfds data_dir, as written by "
        "`python -m spark_tpu.data.prepare --dataset=fashion_mnist --data_dir=DIR`",
    )
    return stage_data_commands(tpu, s.local_data_dir, f"{root}/tfds")


def _plan_run(tpu: Tpu, s: Settings) -> list[Argv]:
    preset = _preset(s)
    run_name = _run_name(dataclasses.replace(s, preset=preset))
    extra = _extra_flags(s)
    output_dir = _output_url(s, run_name) or f"$HOME/{REMOTE_RUNS}/{run_name}"
    command = train_command(preset, output_dir, extra, data_dir=s.pass_data_dir)
    return run_commands(tpu, command, run_name, background=s.background)


def _plan_fetch(tpu: Tpu, s: Settings) -> list[Argv]:
    run_name = _run_name(s)
    _check(bool(s.results_dir), "results_dir", s.results_dir, "a local directory")
    return fetch_commands(tpu, run_name, s.results_dir, _output_url(s, run_name))


_PLANNERS = {
    "create": _plan_create,
    "setup": _plan_setup,
    "stage_data": _plan_stage_data,
    "run": _plan_run,
    "logs": lambda tpu, s: logs_commands(tpu, _run_name(s)),
    "fetch": _plan_fetch,
    "delete": lambda tpu, s: delete_commands(tpu, queued=s.queued),
}


def plan(command: str, settings: Settings) -> list[Argv]:
    """Validates the settings for `command` and returns its argv lists, in order.

    Raises:
      FlagError: naming the flag, its value and what is allowed.
    """
    if command not in _PLANNERS:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    return _PLANNERS[command](_tpu(settings), settings)


def execute(commands: list[Argv]) -> None:
    """Runs the commands in order, stopping at the first failure with a one-line message."""
    missing = [tool for tool in dict.fromkeys(a[0] for a in commands) if not shutil.which(tool)]
    if "gcloud" in missing:
        sys.exit(f"tpu_vm: {GCLOUD_MISSING}")
    if missing:
        sys.exit(f"tpu_vm: `{missing[0]}` is not on PATH; install it first.")
    for argv in commands:
        print("+", shlex.join(argv), file=sys.stderr, flush=True)
        try:
            subprocess.run(argv, check=True)
        except subprocess.CalledProcessError as error:
            sys.exit(f"tpu_vm: failed with exit status {error.returncode}: {shlex.join(argv)}")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        got = " ".join(argv[1:]) or "none"
        sys.exit(f"tpu_vm: expected one command, one of {', '.join(COMMANDS)}; got {got}")
    settings = Settings.from_flags()
    try:
        commands = plan(argv[1], settings)
    except FlagError as error:
        sys.exit(f"tpu_vm: {error}")
    if FLAGS.dry_run:
        print("\n".join(shlex.join(argv) for argv in commands))
        return
    if argv[1] == "fetch":
        os.makedirs(settings.results_dir, exist_ok=True)
    execute(commands)


if __name__ == "__main__":
    app.run(main)
