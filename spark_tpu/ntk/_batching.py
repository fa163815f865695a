"""Mapping a per-dataset function over a leading batch axis, the fast way for the platform.

The solver's cost is skinny ``[C, N] x [N, N]`` products, which are memory-bound. Measured with the
default RK4 solver at N = 1200, C = 10, 800 grid steps (benchmarks/bench_ntk.py):

- CPU (2 cores): ``jax.lax.map`` (one kernel stays in cache while its scan runs) 0.35 ms per
  product vs 0.70 ms for ``jax.vmap`` (batched products stream every kernel each step);
- H100: ``jax.vmap`` over 300 datasets 7.9 ms per dataset vs 41 ms for ``lax.map`` (sequential
  launches) and 8.5–17 ms for ``lax.map(batch_size=50..8)``.

So ``strategy="auto"`` maps on CPU and vmaps elsewhere.

Batched LAPACK on CPU. jaxlib runs a batched decomposition (``eigh``, ``qr``) by splitting the
batch over XLA:CPU's intra-op thread pool and blocking the calling pool thread until the pieces
finish. When several emulated devices run at once (inside ``shard_map``) and each is in such a
call, every pool thread can be blocked waiting for work that no thread is free to run: the
program hangs with the CPU idle (seen with the exponential solver vmapped over 2 clients per
device on 2 devices of a 2-core machine; ``gdb`` shows both pool threads in
``ParallelBatchMap``'s ``BlockingCounter::Wait`` under ``lapack_ssyevd_ffi``). `eigh` and `qr_q`
below batch as a sequential ``lax.map`` of unbatched calls on CPU, which never takes that path;
elsewhere they are the plain ``jnp.linalg`` functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

_STRATEGIES = ("auto", "vmap", "map")


def batch_map(
    fn: Callable[..., Any], *args: Any, strategy: str = "auto", batch_size: int | None = None
) -> Any:
    """``fn`` applied along the leading axis of every array leaf of `args`.

    Args:
        fn: a function of unbatched pytrees (e.g. ``ntk_evolution_step`` with options bound).
        *args: pytrees (stacked Equinox models included) with a common leading axis.
        strategy: ``"vmap"``, ``"map"`` (``jax.lax.map``), or ``"auto"``: map on CPU, else vmap.
        batch_size: with ``"map"``, vmap this many at a time inside the map.

    Returns:
        ``fn``'s outputs stacked along a new leading axis.

    Raises:
        ValueError: for an unknown strategy.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {_STRATEGIES}.")
    if strategy == "auto":
        strategy = "map" if jax.default_backend() == "cpu" else "vmap"
    if strategy == "vmap":
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=batch_size)


def _one_at_a_time_on_cpu(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fn` of one array; on CPU its ``vmap`` is a ``lax.map`` of unbatched calls (module doc),
    elsewhere `fn` as it batches."""

    @jax.custom_batching.custom_vmap
    def one(x):
        return fn(x)

    @one.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size
        out = jax.lax.map(one, x) if in_batched[0] else one(x)
        return out, jax.tree.map(lambda _: bool(in_batched[0]), out)

    def call(x):
        return one(x) if jax.default_backend() == "cpu" else fn(x)

    return call


eigh = _one_at_a_time_on_cpu(lambda a: tuple(jnp.linalg.eigh(a)))
eigh.__doc__ = """``jnp.linalg.eigh(a)`` as ``(eigenvalues ascending, eigenvectors)``, safe to ``vmap``
inside ``shard_map`` on CPU devices (module doc)."""
qr_q = _one_at_a_time_on_cpu(lambda a: jnp.linalg.qr(a)[0])
qr_q.__doc__ = """The orthonormal factor of ``jnp.linalg.qr(a)`` (reduced), safe to ``vmap`` inside
``shard_map`` on CPU devices (module doc)."""


def _over_batch(reduce: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """The identity on one value; under ``vmap``, `reduce` of it over the batch, unbatched."""

    @jax.custom_batching.custom_vmap
    def same(x):
        return x

    @same.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size
        return same(reduce(x) if in_batched[0] else x), False  # same(): an outer vmap's turn

    return same


batch_max = _over_batch(lambda x: jnp.max(x, axis=0, initial=jnp.iinfo(x.dtype).min))
batch_max.__doc__ = """An integer scalar as it is; under ``vmap`` its maximum over the batch
(the dtype's minimum for an empty one), unbatched. A ``lax.switch`` on a batched index runs
every branch (``vmap`` turns it into a select); on the batch's maximum it stays one branch for
the whole batch."""
batch_any = _over_batch(lambda x: jnp.any(x, axis=0))
batch_any.__doc__ = """A boolean scalar as it is; under ``vmap`` whether it holds for any member
of the batch, unbatched (`batch_max`'s reason, for ``lax.cond``)."""
