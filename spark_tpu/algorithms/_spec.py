"""Algorithms by name: a spec per algorithm, one registry (docs/extending.md §2).

An `AlgorithmSpec` is everything the simulator needs to know about an algorithm besides its
(init, round) pair: how to build that pair from a `BuildContext`, its reference hyperparameters
(used when a flag is left unset), whether it gossips over a graph, which of the run's
algorithm-specific options it reads (any other one the user sets is refused), its own options
(``--algorithm_option KEY=VALUE``), the options a checkpoint resume must not change, and checks
that need only the flags. A new algorithm is one file with one ``register`` call::

    def build(ctx: BuildContext) -> Algorithm: ...
    register(AlgorithmSpec("my_algo", build, reference={"lr": 0.05, "batch_size": 10}))

The launcher also takes ``--algorithm=package.module:attribute``: the attribute is an
`AlgorithmSpec`, or a plain build function (then its reference is ``lr=0.1, batch_size=10``, it
gossips over the graph and reads ``--batch_size`` and ``--loss``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from spark_tpu.registry import Registry

from ._base import Algorithm, Model

# Options that only an algorithm gossiping over a graph reads (the server algorithms run on the
# complete graph of the federation).
GRAPH_OPTIONS = (
    "topology", "degree", "mixing", "time_varying", "graph_pool", "edge_probability",
    "torus_shape", "topology_file", "link_failure", "client_dropout",
)


class BuildContext(NamedTuple):
    """What an algorithm's build function receives.

    Attributes:
      model: the model's static structure (``model.apply(params, x)`` gives logits).
      num_classes: C.
      num_clients: Q, the real clients.
      rounds: the run's rounds (for schedules).
      hyper: the reference hyperparameters overridden by every flag the user set (``lr``,
        ``batch_size``, ``local_epochs``, ``momentum`` where the spec has them).
      options: the spec's own options (``defaults`` overridden by ``--algorithm_option``).
      config: the whole run configuration (`spark_tpu.simulator.Config`).
      plan: the gossip plan (its degrees), or None.
    """

    model: Model
    num_classes: int
    num_clients: int
    rounds: int
    hyper: Mapping[str, Any]
    options: Mapping[str, Any]
    config: Any
    plan: Any = None


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm as the simulator sees it.

    Attributes:
      name: what ``--algorithm`` calls it.
      build: ``BuildContext -> Algorithm``.
      reference: reference hyperparameters (``lr`` at least; ``batch_size``, ``local_epochs``,
        ``momentum`` for gradient methods), each overridden by its flag when set.
      uses_graph: gossips over ``--topology`` (False: a server algorithm, the complete graph).
      options: the algorithm-specific run options it reads (Config field names such as
        ``batch_size``, ``horizons``, ``loss``); the graph options come with ``uses_graph``.
      defaults: its own options and their defaults (``--algorithm_option KEY=VALUE``; a value is
        parsed as the type of its default).
      state_options: Config fields a checkpoint resume must not change (they change what the saved
        state means).
      trajectory_options: run options a resume may otherwise change freely (``rounds``) that
        change this algorithm's trajectory (SPARK anneals its last stage up to ``--rounds``): a
        resume that changes one is reported as a trajectory change.
      validate: ``Config -> None``, raising a one-line ValueError; called when the configuration is
        built, before any data loads.
      aliases: other names for ``--algorithm``.
      description: one line for ``--help``.
    """

    name: str
    build: Callable[[BuildContext], Algorithm]
    reference: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"lr": 0.1})
    uses_graph: bool = True
    options: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state_options: tuple[str, ...] = ()
    trajectory_options: tuple[str, ...] = ()
    validate: Callable[[Any], None] | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        if "lr" not in self.reference:
            raise ValueError(f"algorithm {self.name!r}: its reference needs an 'lr'.")
        object.__setattr__(self, "reference", types.MappingProxyType(dict(self.reference)))
        object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))

    def reads(self, option: str) -> bool:
        """True when the run option ``option`` (a Config field) changes this algorithm's runs."""
        return option in self.options or (self.uses_graph and option in GRAPH_OPTIONS)


def as_spec(path: str, obj) -> AlgorithmSpec:
    """``obj`` (an AlgorithmSpec or a build function) as a spec named ``path``."""
    if isinstance(obj, AlgorithmSpec):
        return dataclasses.replace(obj, name=path)
    if callable(obj):
        return AlgorithmSpec(path, obj, reference={"lr": 0.1, "batch_size": 10},
                             options=("batch_size", "loss"),
                             description=(obj.__doc__ or "").strip().split("\n")[0])
    raise ValueError(f"--algorithm={path}: is a {type(obj).__name__}, not an AlgorithmSpec or a "
                     "build function (BuildContext -> Algorithm).")


ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm", "algorithm", convert=as_spec)


def register(spec: AlgorithmSpec, *, replace: bool = False) -> AlgorithmSpec:
    """Makes ``spec`` available as ``--algorithm=spec.name`` and to `spark_tpu.simulate`."""
    return ALGORITHMS.register(spec.name, spec, aliases=spec.aliases, replace=replace)


def get(name: str) -> AlgorithmSpec:
    """The spec called ``name`` (a registered name, an alias or an import path)."""
    return ALGORITHMS.get(name)


def parse_options(spec: AlgorithmSpec, pairs) -> dict[str, Any]:
    """``spec.defaults`` overridden by ``(key, text)`` pairs, each parsed as its default's type.

    Examples:
      >>> s = AlgorithmSpec("demo", lambda ctx: None, defaults={"rho": 0.5, "steps": 2})
      >>> parse_options(s, [("steps", "3")])
      {'rho': 0.5, 'steps': 3}
    """
    out = dict(spec.defaults)
    for key, text in pairs:
        if key not in out:
            known = ", ".join(out) or "none"
            raise ValueError(f"--algorithm_option={key}={text}: --algorithm={spec.name} has no "
                             f"option {key!r} (its options: {known}).")
        kind = type(spec.defaults[key])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = text.lower() in ("true", "1")
            else:
                out[key] = kind(text) if not isinstance(text, kind) else text
        except ValueError:
            raise ValueError(f"--algorithm_option={key}={text}: expected a {kind.__name__} (its "
                             f"default is {spec.defaults[key]!r}).") from None
    return out
