"""Pure builders of the `gcloud` command lines behind `python -m launch_tpu.tpu_vm`.

Every builder returns a list of argv lists and touches nothing, so the exact commands are
unit-testable and `--dry_run` prints what would run. Commands that act on the TPU's hosts use
`--worker=all`, which on a single-host TPU means worker 0 and on a pod slice means every host.

Remote paths live under the worker's `$HOME` and are left unquoted so the worker's shell expands
them; every value that comes from a flag is quoted with `shlex.quote`.

References:
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/create
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create
  https://cloud.google.com/tpu/docs/runtimes (software version per TPU generation)
"""

import dataclasses
import re
import shlex

Argv = list[str]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QUEUED_RESOURCES = ["gcloud", "compute", "tpus", "queued-resources"]

#: Where `setup` unpacks the repository and builds the virtual environment on every worker.
REMOTE_REPO = "$HOME/spark_tpu"
REMOTE_ARCHIVE = "spark_tpu.tar.gz"  # relative to the remote home, as `scp` expects
REMOTE_VENV = "$HOME/spark_tpu_venv"
#: Where `stage_data` puts the tfds data on every worker (also tfds' own default data_dir).
REMOTE_DATA_DIR = "$HOME/tensorflow_datasets"
#: Where single-host runs without a bucket write their output, and where logs go.
REMOTE_RUNS = "spark_tpu_runs"
REMOTE_LOGS = "spark_tpu_logs"
#: The TPU images ship Python 3.10, below the package's `requires-python`; uv brings 3.11.
PYTHON_VERSION = "3.11"
UV = "$HOME/.local/bin/uv"
UV_INSTALLER = "https://astral.sh/uv/install.sh"

ACCELERATOR_TYPE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
#: Generations whose accelerator-type suffix counts TensorCores (two per chip, 8 per host);
#: the others (v5litepod, v6e) count chips.
_CORE_COUNTED = ("v2", "v3", "v4", "v5p")
#: Recommended software version for JAX per generation (cloud.google.com/tpu/docs/runtimes).
DEFAULT_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}


@dataclasses.dataclass(frozen=True)
class Tpu:
    """Which TPU the commands address.

    Attributes:
      name: the TPU VM (node) name; also the queued-resource id when `queued`.
      zone: the Compute Engine zone, e.g. `us-central2-b`.
      project: the Google Cloud project; None uses gcloud's configured project.
    """

    name: str
    zone: str
    project: str | None = None


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
    """Splits `v4-32` into `("v4", 32)`.

    Raises:
      ValueError: if `accelerator_type` is not GENERATION-SIZE with a known generation, or if
        a TensorCore-counted generation (v2, v3, v4, v5p) has a size that is not a multiple of 8.
    """
    match = ACCELERATOR_TYPE.match(accelerator_type)
    if match is None:
        raise ValueError(accelerator_type)
    generation, size = match.group(1), int(match.group(2))
    if generation in _CORE_COUNTED and size % 8:
        raise ValueError(accelerator_type)
    return generation, size


def is_pod_slice(accelerator_type: str) -> bool:
    """Whether the slice spans several hosts (workers).

    A host holds 8 TensorCores (v2-v4, v5p) or up to 8 chips (v5litepod, v6e), so any size
    above 8 is a multi-host pod slice: `v4-8` and `v5litepod-8` are one host, `v4-32` and
    `v5litepod-32` are several.
    """
    return parse_accelerator_type(accelerator_type)[1] > 8


def default_runtime_version(accelerator_type: str) -> str:
    """The recommended TPU software version for JAX on this accelerator's generation."""
    return DEFAULT_RUNTIME[parse_accelerator_type(accelerator_type)[0]]


def _where(tpu: Tpu) -> Argv:
    return [f"--zone={tpu.zone}", *_project(tpu)]


def _project(tpu: Tpu) -> Argv:
    return [] if tpu.project is None else [f"--project={tpu.project}"]


def ssh(tpu: Tpu, script: str, *, worker: str = "all") -> Argv:
    """`gcloud ... tpu-vm ssh` running the shell `script` on `worker` (default: all)."""
    return [*TPU_VM, "ssh", tpu.name, *_where(tpu), f"--worker={worker}", f"--command={script}"]


def scp(tpu: Tpu, source: str, destination: str, *, worker: str, recurse: bool = False) -> Argv:
    """`gcloud ... tpu-vm scp`; remote paths are written `NAME:PATH` by the caller."""
    flags = ["--recurse"] if recurse else []
    return [*TPU_VM, "scp", source, destination, *flags, *_where(tpu), f"--worker={worker}"]


def create_commands(
    tpu: Tpu,
    accelerator_type: str,
    runtime_version: str,
    *,
    spot: bool = False,
    preemptible: bool = False,
    queued: bool = False,
) -> list[Argv]:
    """Creates the TPU VM directly, or through a queued resource that waits for capacity.

    A queued resource is named like the node it creates, so the other commands address it
    by `tpu.name` alike; queued resources take `--spot` but not `--preemptible`.
    """
    provisioning = ["--spot"] if spot else ["--preemptible"] if preemptible else []
    if queued:
        head = [*QUEUED_RESOURCES, "create", tpu.name, f"--node-id={tpu.name}"]
        version = f"--runtime-version={runtime_version}"
    else:
        head = [*TPU_VM, "create", tpu.name]
        version = f"--version={runtime_version}"
    return [[*head, *_where(tpu), f"--accelerator-type={accelerator_type}", version, *provisioning]]


def delete_commands(tpu: Tpu, *, queued: bool = False) -> list[Argv]:
    """Deletes the TPU VM (or its queued resource together with the node, `--force`)."""
    if queued:
        return [[*QUEUED_RESOURCES, "delete", tpu.name, *_where(tpu), "--force", "--quiet"]]
    return [[*TPU_VM, "delete", tpu.name, *_where(tpu), "--quiet"]]


def install_script() -> str:
    """The shell script that unpacks the repository and installs it on one worker.

    `gcsfs` lets etils.epath (used by Orbax) write `gs://` output directories without TensorFlow.
    """
    python = f"{REMOTE_VENV}/bin/python"
    return " && ".join(
        [
            f"rm -rf {REMOTE_REPO}",
            f"tar -xzf $HOME/{REMOTE_ARCHIVE} -C $HOME",
            f"(test -x {UV} || curl -LsSf {UV_INSTALLER} | sh)",
            f"rm -rf {REMOTE_VENV}",
            f"{UV} venv --python {PYTHON_VERSION} {REMOTE_VENV}",
            f'{UV} pip install --python {python} -e {REMOTE_REPO} "jax[tpu]" gcsfs',
            f'{python} -c "import jax; print(jax.device_count(), jax.devices()[0].platform)"',
        ]
    )


def setup_commands(tpu: Tpu, repo_root: str, archive: str, git_ref: str = "HEAD") -> list[Argv]:
    """Ships `git_ref` of the local checkout to every worker and installs it there.

    `git archive` packs only committed files, so every worker gets the same tree, free of
    local virtual environments and results; commit a preset before `setup` to ship it.
    """
    return [
        [
            "git",
            "-C",
            repo_root,
            "archive",
            "--format=tar.gz",
            "--prefix=spark_tpu/",
            f"--output={archive}",
            git_ref,
        ],
        scp(tpu, archive, f"{tpu.name}:{REMOTE_ARCHIVE}", worker="all"),
        ssh(tpu, install_script()),
    ]


def stage_data_commands(tpu: Tpu, local_data_dir: str, data_url: str) -> list[Argv]:
    """Uploads a prepared tfds data directory and mirrors it onto every worker's disk.

    tfds' array_record data sources open files through riegeli, which cannot read `gs://`
    (google/array_record#120), so workers read a local copy at `REMOTE_DATA_DIR`.
    """
    sync = f"gcloud storage rsync --recursive {shlex.quote(data_url)} {REMOTE_DATA_DIR}"
    return [
        ["gcloud", "storage", "rsync", "--recursive", local_data_dir, data_url, *_project(tpu)],
        ssh(tpu, f"mkdir -p {REMOTE_DATA_DIR} && {sync}"),
    ]


def train_command(preset: str, output_dir: str, extra_flags: list[str], data_dir: bool) -> str:
    """The shell form of `python -m launch_tpu.main ...` as every worker runs it.

    Args:
      preset: the flagfile's name in `experiments/presets/`, without `.flags`.
      output_dir: a `gs://` URL (quoted here) or a path under `$HOME` (left to the shell).
      extra_flags: further flags for `launch_tpu.main`, each quoted; they come last, so they
        override the preset's.
      data_dir: whether to pass `--data_dir` pointing at the data `stage_data` copied.
    """
    out = output_dir if output_dir.startswith("$HOME/") else shlex.quote(output_dir)
    words = [
        f"{REMOTE_VENV}/bin/python",
        "-m",
        "launch_tpu.main",
        shlex.quote(f"--flagfile=experiments/presets/{preset}.flags"),
        f"--output_dir={out}",
    ]
    if data_dir:
        words.append(f"--data_dir={REMOTE_DATA_DIR}")
    return " ".join(words + [shlex.quote(flag) for flag in extra_flags])


def run_commands(tpu: Tpu, command: str, run_name: str, *, background: bool = True) -> list[Argv]:
    """Starts `command` on every worker at once, logging to `~/spark_tpu_logs/RUN.log`.

    In the background (`nohup`, stdin closed) the ssh sessions return at once and the run
    survives them; in the foreground the output streams back and is also logged.
    """
    log = f"$HOME/{REMOTE_LOGS}/{shlex.quote(run_name + '.log')}"
    prefix = f"cd {REMOTE_REPO} && mkdir -p $HOME/{REMOTE_LOGS} && "
    if background:
        script = f"{prefix}nohup {command} > {log} 2>&1 < /dev/null &"
    else:
        script = f"{prefix}{command} 2>&1 | tee {log}"
    return [ssh(tpu, script)]


def fetch_commands(
    tpu: Tpu, run_name: str, results_dir: str, output_url: str | None = None
) -> list[Argv]:
    """Copies a run's output directory to `results_dir/RUN`, plus worker 0's log beside it.

    Args:
      output_url: the run's `gs://` output directory; None means the run wrote to worker 0's
        disk (single host, no bucket) and is copied with scp into the existing `results_dir`.
    """
    local_run = f"{results_dir.rstrip('/')}/{run_name}"
    if output_url is None:
        results = scp(
            tpu, f"{tpu.name}:{REMOTE_RUNS}/{run_name}", results_dir, worker="0", recurse=True
        )
    else:
        results = [
            "gcloud",
            "storage",
            "rsync",
            "--recursive",
            output_url,
            local_run,
            *_project(tpu),
        ]
    log = scp(
        tpu, f"{tpu.name}:{REMOTE_LOGS}/{run_name}.log", f"{local_run}.worker0.log", worker="0"
    )
    return [results, log]


def logs_commands(tpu: Tpu, run_name: str, lines: int = 50) -> list[Argv]:
    """Prints the last `lines` lines of the run's log on every worker."""
    log = f"$HOME/{REMOTE_LOGS}/{shlex.quote(run_name + '.log')}"
    return [ssh(tpu, f"tail -n {lines} {log}")]
