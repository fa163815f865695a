"""The launcher's absl flags, and their translation into a simulator Config (parsed once)."""

from __future__ import annotations

import glob
import os
import textwrap

from absl import flags

from spark_tpu import data, models, topology
from spark_tpu.simulator import ALGORITHMS, Config, refuse_unused

_D = Config()

flags.DEFINE_enum("mode", "train", ["train", "predict"], "train: simulate; predict: seed-002 "
                  "learning-dynamics predictions for dgd/atc/cta on this setting.")
flags.DEFINE_string("algorithm", _D.algorithm, f"One of {', '.join(ALGORITHMS)} (dpsgd = dgd), "
                    "or your own by import path: package.module:attribute (an AlgorithmSpec or a "
                    "build function; docs/extending.md).")
flags.DEFINE_multi_string("algorithm_option", [], "KEY=VALUE for your algorithm's own options "
                          "(AlgorithmSpec.defaults; repeatable).")
flags.DEFINE_string("dataset", _D.dataset, "fashion_mnist, mnist, emnist, cifar10 or any tfds "
                    f"image-classification name; {', '.join(data.DATASETS)}; or your own loader by "
                    "import path: package.module:attribute (a function returning a "
                    "spark_tpu.data.Dataset; docs/extending.md).")
flags.DEFINE_string("data_dir", None, "tfds/array_record cache (default $SPARK_TPU_DATA_DIR or "
                    "~/.cache/spark_tpu/tfds); prepared automatically when missing.")
flags.DEFINE_string("idx_dir", None, "Folder of MNIST-format IDX files for offline preparation.")
flags.DEFINE_string("partition", _D.partition, f"One of {', '.join(data.PARTITIONERS)}, or "
                    "file (read from --partition_file).")
flags.DEFINE_string("partition_file", None, "For --partition=file: each client's train indices in "
                    "the data set's source order (Fashion-MNIST: the IDX files'), as .json, .npy, "
                    ".npz or .pkl (docs/data.md §6).")
flags.DEFINE_float("alpha", _D.alpha, "Dirichlet concentration (smaller = more label skew).")
flags.DEFINE_integer("shards_per_client", _D.shards_per_client, "Classes per client for shards.")
flags.DEFINE_integer("clients", _D.clients, "Number of clients Q.")
flags.DEFINE_integer("samples_per_client", _D.samples_per_client, "Samples per client.")
flags.DEFINE_string("model", _D.model, f"One of {', '.join(models.MODELS)} (mlp: 784-100-10; "
                    "linear: affine), or your own by import path: package.module:attribute (a "
                    "factory (input_shape, *, num_classes, key) -> Equinox module; "
                    "docs/extending.md).")
flags.DEFINE_string("topology", _D.topology, f"One of {', '.join(topology.TOPOLOGIES)} "
                    "(custom: --topology_file).")
flags.DEFINE_integer("degree", _D.degree, "d for --topology=regular.")
flags.DEFINE_string("mixing", _D.mixing, "uniform (1/(deg+1), NTK-DFL) or metropolis.")
flags.DEFINE_bool("time_varying", _D.time_varying, "A random graph every round, drawn from a pool "
                  "of --graph_pool pre-drawn graphs.")
flags.DEFINE_integer("graph_pool", _D.graph_pool, "Pre-drawn graphs for --time_varying.")
flags.DEFINE_float("edge_probability", _D.edge_probability, "p for --topology=erdos_renyi.")
flags.DEFINE_string("torus_shape", None, "ROWSxCOLS for --topology=torus (default: most square).")
flags.DEFINE_string("topology_file", None, "0/1 adjacency or row-stochastic matrix (.npy/.txt).")
flags.DEFINE_float("link_failure", 0.0, "Probability that a link fails in a round.")
flags.DEFINE_float("client_dropout", 0.0, "Probability that a client sits out a round.")
flags.DEFINE_integer("rounds", _D.rounds, "Communication rounds.")
flags.DEFINE_float("lr", None, "Learning rate / NTK step size η0 (default: the reference value).")
flags.DEFINE_float("lr_decay", _D.lr_decay, "NTK step-size decay: η_k = η0·exp(−decay·k).")
flags.DEFINE_integer("batch_size", None, "Local minibatch size (default: reference value).")
flags.DEFINE_integer("local_epochs", None, "Local epochs for dfedavg(m)/fedavg.")
flags.DEFINE_float("momentum", None, "Local momentum for dfedavgm/fedavg.")
flags.DEFINE_float("participation", _D.participation, "Fraction of clients sampled per round "
                   "(fedavg, ntk_fl).")
flags.DEFINE_list("horizons", [str(h) for h in _D.horizons], "NTK evolution horizons τ.")
flags.DEFINE_string(
    "solver", _D.solver, "Function-space solver: auto (default: exponential from 512 pooled rows, "
    "adaptive below; both error-controlled, steps chosen per client, weight-step errors within "
    "1e-4 on every audited client, experiments/solver_audit.py), adaptive (RK4), "
    "exponential (exponential RK with the stiff eigenspace of the kernel integrated exactly: "
    "about a quarter of adaptive's kernel products), or a "
    "fixed step: rk4, bosh3, dopri5, midpoint, euler (discrete GD of the linearized model), "
    "rkc4/rkc6 (Runge–Kutta–Chebyshev, 2nd order: longer stable --solver_stride).",
)
flags.DEFINE_integer(
    "solver_stride", _D.solver_stride,
    "Fixed-step solvers only: grid intervals per solver step after the first 32 (Hermite-"
    "interpolated residuals in between). A step that leaves the solver's accuracy (stability) "
    "region is reported by a warning naming the round and the client count.",
)  # fmt: skip
flags.DEFINE_bool(
    "degree_buckets", _D.degree_buckets,
    "NTK-DFL/SPARK on graphs with uneven degrees (erdos_renyi, star, custom): evolve every client "
    "on a shorter compacted pooled width and only the fullest neighbourhoods at full width (the "
    "same result as padding all to the largest degree, at less cost).",
)  # fmt: skip
flags.DEFINE_string("loss", _D.loss, "ce or mse (not SPARK, whose regularizer is cross-entropy).")
flags.DEFINE_string(
    "tau_selection", _D.tau_selection,
    "NTK methods: how τ* is chosen. pooled: the real network's loss on the pooled data (the "
    "reference; the candidate steps go to each neighbour and losses come back, bytes counted); "
    "linearized: the loss of f(X; w) + J Δw_τ from the Jacobians already received (no bytes).",
)  # fmt: skip
flags.DEFINE_integer("seed", _D.seed, "Root seed (data split, graphs, init, sampling).")
flags.DEFINE_integer("devices", 0, "Devices to shard clients over; 0 = all accelerators, or one "
                     "emulated CPU device per core (at most 8) when there is no accelerator.")
flags.DEFINE_enum("mesh", _D.mesh, ["auto", "flat", "2d"], "Device mesh: 2d tiles a torus on a "
                  "2-D mesh (one ppermute per mesh axis); flat shards clients on one axis; auto "
                  "picks 2d for a torus when the device count tiles it.")
flags.DEFINE_integer("eval_every", _D.eval_every, "Rounds per compiled chunk / evaluation.")
flags.DEFINE_integer("local_eval_samples", _D.local_eval_samples, "Test samples per local model.")
flags.DEFINE_float("target_accuracy", _D.target_accuracy, "Report rounds/bytes to this accuracy.")
flags.DEFINE_string("output_dir", "runs/latest", "Where metrics, summary, plots and checkpoints go.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --output_dir.")
flags.DEFINE_bool("overwrite", False, "Start afresh in an --output_dir that holds an earlier "
                  "run's checkpoints (they are deleted).")
flags.DEFINE_integer("checkpoint_every", 0, "Save every K rounds (0: only at the end).")
flags.DEFINE_integer("keep_checkpoints", 2, "Checkpoints to keep.")
flags.DEFINE_string("spark_stages", "", "SPARK stage schedule (see README).")
flags.DEFINE_multi_string("spark", [], "SPARK option KEY=VALUE (repeatable; see README).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process "
                    "run on CPU/GPU hosts (TPU pods need none of these three flags).")
flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
flags.DEFINE_bool("small", False, "Shrink any preset to a seconds-to-minutes demo.")

FLAGS = flags.FLAGS

# `--help`: the project's flags in these groups (absl's own flags stay in --helpfull).
GROUPS = {
    "run": ["mode", "algorithm", "algorithm_option", "rounds", "seed", "devices", "mesh", "eval_every", "small",
            "coordinator_address", "num_processes", "process_id"],
    "data": ["dataset", "data_dir", "idx_dir", "partition", "partition_file", "alpha",
             "shards_per_client", "clients", "samples_per_client", "local_eval_samples"],
    "topology": ["topology", "degree", "mixing", "time_varying", "graph_pool", "edge_probability",
                 "torus_shape", "topology_file", "link_failure", "client_dropout"],
    "algorithm": ["model", "lr", "lr_decay", "batch_size", "local_epochs", "momentum",
                  "participation", "loss"],
    "NTK solver": ["horizons", "solver", "solver_stride", "tau_selection", "degree_buckets"],
    "SPARK": ["spark_stages", "spark"],
    "outputs": ["output_dir", "resume", "overwrite", "checkpoint_every", "keep_checkpoints",
                "target_accuracy"],
}
PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "presets")


def _preset_lines() -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(PRESETS, "*.flags"))):
        header = []
        with open(path) as f:  # the header's description: comment lines before the command
            for line in f:
                if not line.startswith("#") or "python -m" in line:
                    break
                header.append(line.lstrip("# ").strip())
        first = " ".join(header)
        lines.append(f"  --flagfile=experiments/presets/{os.path.basename(path)}")
        lines.extend(textwrap.wrap(first, 96, initial_indent="      ", subsequent_indent="      "))
    return lines


def grouped_help(usage: str) -> str:
    """The text of ``--help``: usage, every project flag by group with its default, presets."""
    out = [usage.strip(), ""]
    for group, names in GROUPS.items():
        out.append(f"{group}:")
        for name in names:
            flag = FLAGS[name]
            value = flag.default
            if isinstance(value, list):
                value = ",".join(map(str, value)) or "none"
            elif isinstance(value, bool):
                value = str(value).lower()
            default = "" if value is None else f" (default {value})"
            out.append(f"  --{name}{default}")
            out.extend(textwrap.wrap(flag.help, 96, initial_indent="      ",
                                     subsequent_indent="      "))
        out.append("")
    out.append("presets (add --small to shrink any of them to a CPU demo):")
    out.extend(_preset_lines())
    out += ["", "absl's own flags (logging, --flagfile, JAX): --helpfull."]
    return "\n".join(out)

SMALL = dict(clients=32, samples_per_client=100, rounds=5, graph_pool=8, local_eval_samples=500)


def _torus(text):
    if not text:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--torus_shape={text}: write ROWSxCOLS, e.g. 15x20.") from None
    return rows, cols


def _horizons(values):
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--horizons={','.join(values)}: give integers, e.g. 100,200,400.") from None


def _pairs(values, flag: str = "spark", example: str = "momentum=nesterov"):
    out = []
    for item in values:
        if "=" not in item:
            raise ValueError(f"--{flag}={item}: write KEY=VALUE, e.g. --{flag}={example}.")
        out.append(tuple(item.split("=", 1)))
    return tuple(out)


def config_from_flags(devices: int) -> Config:
    """Every flag into one validated Config (raises ValueError naming the bad flag)."""
    f = FLAGS
    cfg = Config(
        algorithm=f.algorithm, dataset=f.dataset, data_dir=f.data_dir, idx_dir=f.idx_dir,
        partition=f.partition, partition_file=f.partition_file, alpha=f.alpha,
        shards_per_client=f.shards_per_client,
        clients=f.clients, samples_per_client=f.samples_per_client, model=f.model,
        topology=f.topology, degree=f.degree, mixing=f.mixing, time_varying=f.time_varying,
        graph_pool=f.graph_pool, edge_probability=f.edge_probability,
        torus_shape=_torus(f.torus_shape), topology_file=f.topology_file,
        mesh=f.mesh,
        link_failure=f.link_failure, client_dropout=f.client_dropout, rounds=f.rounds, lr=f.lr,
        lr_decay=f.lr_decay, batch_size=f.batch_size, local_epochs=f.local_epochs,
        momentum=f.momentum, participation=f.participation, horizons=_horizons(f.horizons),
        solver=f.solver, solver_stride=f.solver_stride, degree_buckets=f.degree_buckets,
        loss=f.loss, tau_selection=f.tau_selection, seed=f.seed, devices=devices,
        eval_every=f.eval_every,
        local_eval_samples=f.local_eval_samples, target_accuracy=f.target_accuracy,
        checkpoint_every=f.checkpoint_every, keep_checkpoints=f.keep_checkpoints,
        spark_stages=f.spark_stages, spark_options=_pairs(f.spark),
        algorithm_options=_pairs(f.algorithm_option, "algorithm_option", "rho=0.5"),
    )
    refuse_unused(cfg, [FIELDS.get(name, name) for name in f if f[name].present])
    if f.small:
        small = {k: min(v, getattr(cfg, k)) for k, v in SMALL.items()}
        cfg = cfg.replace(**small)
    return cfg


FIELDS = {"spark": "spark_options", "algorithm_option": "algorithm_options"}  # launcher flag -> Config field, where they differ
