"""The run configuration: every launcher flag as one frozen dataclass, validated at construction.

Error messages name the flag, the value and what would work (docs/style.md §10).
"""

from __future__ import annotations

import dataclasses

from spark_tpu import algorithms, data, models, registry

# The built-ins (a name registered later is accepted too: validation reads the live registries).
ALGORITHMS = algorithms.ALGORITHMS.names()  # see `algorithms.register`
PARTITIONS = data.PARTITIONERS.names()  # see `data.register_partitioner`
MODELS = models.MODELS.names()  # see `models.register`
# Options of the seeded partitions that --partition=file (a fixed split) does not read.
DRAWN_PARTITION_OPTIONS = ("alpha", "shards_per_client", "samples_per_client")
LOSSES = ("ce", "mse")
# "auto" (exponential from ntk.AUTO_EXPONENTIAL_ROWS pooled rows, adaptive below), "adaptive"
# (error-controlled RK4), "exponential" (error-controlled exponential RK, the stiff eigenspace of K
# deflated) or a fixed-step key of spark_tpu.ntk.TABLEAUX
SOLVERS = (
    "auto", "adaptive", "exponential", "rk4", "bosh3", "dopri5", "midpoint", "euler", "rkc4", "rkc6",
)
TAU_SELECTIONS = ("pooled", "linearized")  # how the NTK step picks τ* (algorithms.selection_bytes)
# The label of a model, partition or graph given as an object to `spark_tpu.simulate`.
CUSTOM = "custom"

# Why each algorithm-specific option does nothing for the built-in algorithms that do not read it
# (`AlgorithmSpec.options` says which do). `refuse_unused` stops a run that sets one of these for
# an algorithm that does not read it, instead of silently ignoring it. A flag not listed here
# applies to every algorithm: data, model, rounds, seed, evaluation, devices, checkpoints.
_NO_GRAPH = "the server algorithms use no graph"
REASONS = {
    **{name: _NO_GRAPH for name in algorithms.GRAPH_OPTIONS},
    "link_failure": "the server algorithms use no graph links",
    "client_dropout": "centralized SGD has no clients to drop",
    "lr_decay": "only NTK-DFL and SPARK decay η (NTK-FL's η is constant)",
    "batch_size": "the NTK methods use every sample",
    "local_epochs": "only DFedAvg(M) and FedAvg train locally",
    "momentum": "it is the local SGD momentum of DFedAvg(M)/FedAvg (SPARK's μ is set in "
                "--spark_stages)",
    "participation": "only FedAvg and NTK-FL sample clients",
    "horizons": "only the NTK methods have horizons",
    "solver": "only the NTK methods solve a function-space flow",
    "solver_stride": "only the NTK methods solve a function-space flow",
    "client_batch": "only the NTK methods batch their evolution steps",
    "tau_selection": "only the NTK methods choose a horizon τ*",
    "degree_buckets": "only NTK-DFL and SPARK pool neighbourhood data",
    "loss": "SPARK's soft-label regularizer is defined for cross-entropy",
    "spark_stages": "it configures SPARK only",
    "spark_options": "it configures SPARK only",
}


def applies() -> dict[str, tuple[tuple[str, ...], str]]:
    """For every algorithm-specific option: (the registered algorithms that read it, why it does
    nothing for the others)."""
    specs = [algorithms.get(name) for name in algorithms.ALGORITHMS.names()]
    return {
        option: (tuple(s.name for s in specs if s.reads(option)), reason)
        for option, reason in REASONS.items()
    }


APPLIES = applies()  # of the built-ins
FLAG_NAMES = {"spark_options": "spark"}  # Config field -> launcher flag, where they differ


def refuse_unused(cfg: "Config", given) -> None:
    """Raises a one-line ValueError for the first flag in ``given`` (Config field names the user
    set) that would not change a run of ``cfg.algorithm``."""
    spec = algorithms.get(cfg.algorithm)
    for name in given:
        flag = "--" + FLAG_NAMES.get(name, name)
        if name in REASONS and not spec.reads(name):
            reason = REASONS[name] if cfg.algorithm in ALGORITHMS else (
                f"{cfg.algorithm} does not read it (its AlgorithmSpec.options)")
            raise ValueError(f"{flag} does nothing for --algorithm={cfg.algorithm}: "
                             f"{reason}; remove it.")
        if name in DRAWN_PARTITION_OPTIONS and cfg.partition == "file":
            raise ValueError(f"{flag} does nothing with --partition=file: --partition_file fixes "
                             "which examples each client holds; remove it.")
        if name in ("solver", "solver_stride") and cfg.loss == "mse":
            raise ValueError(f"{flag} does nothing with --loss=mse: the MSE flow is solved in "
                             "closed form; remove it.")


@dataclasses.dataclass(frozen=True)
class Config:
    """One simulation. Defaults reproduce the NTK-DFL reference setting (docs/ntk_dfl.md §4)."""

    algorithm: str = "ntk_dfl"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    idx_dir: str | None = None
    partition: str = "dirichlet"
    partition_file: str | None = None  # --partition=file: client -> train indices (docs/data.md §6)
    alpha: float = 0.1
    shards_per_client: int = 2
    clients: int = 300
    samples_per_client: int = 200
    model: str = "mlp"
    topology: str = "regular"
    degree: int = 5
    mixing: str = "uniform"
    time_varying: bool = True
    graph_pool: int = 64
    edge_probability: float = 0.05
    torus_shape: tuple[int, int] | None = None
    topology_file: str | None = None
    link_failure: float = 0.0
    client_dropout: float = 0.0
    rounds: int = 30
    lr: float | None = None  # None: the algorithm's reference value
    lr_decay: float = 0.07
    batch_size: int | None = None
    local_epochs: int | None = None
    momentum: float | None = None
    participation: float = 0.07
    horizons: tuple[int, ...] = (100, 200, 400, 600, 800)
    solver: str = "auto"
    solver_stride: int = 1  # fixed-step solvers: grid intervals per step after step 32
    client_batch: int = 0  # NTK: 0 = by platform (map on CPU, vmap on GPU/TPU); k = batches of k
    degree_buckets: bool = True  # NTK-DFL/SPARK: two pooled widths on uneven-degree graphs
    loss: str = "ce"
    tau_selection: str = "pooled"  # NTK: τ* by the real network on the pooled data, or linearized
    seed: int = 0
    devices: int = 8
    mesh: str = "auto"  # auto | flat | 2d: a torus tiled on a 2-D device mesh (topology docs)
    eval_every: int = 1
    local_eval_samples: int = 2000
    target_accuracy: float = 0.85
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    spark_stages: str = ""
    spark_options: tuple[tuple[str, str], ...] = ()
    algorithm_options: tuple[tuple[str, str], ...] = ()  # the algorithm's own (AlgorithmSpec.defaults)

    def __post_init__(self):
        object.__setattr__(self, "algorithm", algorithms.ALGORITHMS.canonical(self.algorithm))
        spec = algorithms.get(self.algorithm)  # a one-line error for an unknown name
        # custom: an object given to spark_tpu.simulate; an import path is imported at build time
        for name, known in ((self.partition, data.PARTITIONERS), (self.model, models.MODELS)):
            if name not in (CUSTOM, "file") and not registry.is_import_path(name):
                known.get(name)  # a one-line error listing the choices
        if self.partition == "file" and not self.partition_file:
            raise ValueError("--partition=file needs --partition_file=PATH: a .json, .npy, .npz or "
                             ".pkl of each client's train indices (docs/data.md §6).")
        if self.partition_file and self.partition != "file":
            raise ValueError(f"--partition_file={self.partition_file} is read only with "
                             f"--partition=file, not --partition={self.partition}: add "
                             "--partition=file or remove --partition_file.")
        _choice("--loss", self.loss, LOSSES)
        _choice("--tau_selection", self.tau_selection, TAU_SELECTIONS)
        _positive("--clients", self.clients, minimum=2)
        _positive("--samples_per_client", self.samples_per_client)
        _positive("--rounds", self.rounds)
        _positive("--solver_stride", self.solver_stride)
        _choice("--solver", self.solver, SOLVERS)
        if self.solver_stride != 1 and self.solver in ("auto", "adaptive", "exponential", "euler"):
            raise ValueError(
                f"--solver_stride={self.solver_stride} with --solver={self.solver}: "
                + (f"the {self.solver} solver chooses its own steps" if self.solver != "euler" else
                   "euler is discrete gradient descent, one step per grid interval")
                + "; drop --solver_stride, or pick a fixed-step solver such as --solver=rk4."
            )
        _positive("--devices", self.devices)
        _positive("--eval_every", self.eval_every)
        _positive("--local_eval_samples", self.local_eval_samples)
        _probability("--link_failure", self.link_failure, allow_one=False)
        _probability("--client_dropout", self.client_dropout, allow_one=False)
        _probability("--participation", self.participation, allow_zero=False, allow_one=True)
        if self.alpha <= 0:
            raise ValueError(f"--alpha={self.alpha}: the Dirichlet concentration must be > 0.")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"--lr={self.lr}: the learning rate must be > 0.")
        if self.lr_decay < 0:
            raise ValueError(f"--lr_decay={self.lr_decay}: must be ≥ 0 (0 disables decay).")
        if not self.horizons or any(h < 1 for h in self.horizons) or list(self.horizons) != sorted(
            set(self.horizons)
        ):
            raise ValueError(
                f"--horizons={','.join(map(str, self.horizons))}: give increasing positive integers, "
                "e.g. 100,200,400,600,800."
            )
        if not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"--target_accuracy={self.target_accuracy}: must be in (0, 1].")
        refuse_unused(self, [k for k in ("loss", "spark_stages", "spark_options")
                             if getattr(self, k) != _DEFAULTS[k]])
        algorithms.parse_options(spec, self.algorithm_options)
        if spec.validate is not None:  # e.g. SPARK's stages and options, before any data loads
            spec.validate(self)

    @property
    def spec(self) -> "algorithms.AlgorithmSpec":
        """The algorithm's registered spec."""
        return algorithms.get(self.algorithm)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _choice(flag: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{flag}={value}: choose one of {', '.join(allowed)}.")


def _positive(flag: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ValueError(f"{flag}={value}: must be ≥ {minimum}.")


def _probability(flag, value, allow_zero=True, allow_one=False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    if not (low_ok and high_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{flag}={value}: must be a probability in {lo}, {hi}.")
