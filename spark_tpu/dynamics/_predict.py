"""Predicted per-client learning dynamics: discrete recursion and gradient flow (docs/dynamics.md §1).

Conventions used everywhere in `spark_tpu.dynamics`:

- Client q minimizes L_q(θ) = (c/2) ‖f(X_q; θ) − y_q‖² (sum over its D samples and M outputs).
  The default c = 1/D is the seed's local objective (eq. 3 with ℓ = ½‖·‖², i.e. eq. 15), so one
  iteration of eq. 4 is θ_q ← Σ_r w_qr θ_r − η ∇L_q(θ_q). Seed eqs. 7 and 12 differentiate the
  *global* L = (1/Q) Σ_q L_q instead, which is the same recursion with c = 1/(DQ): pass
  ``loss_scale=1/(D*Q)`` to reproduce the η/(DQ) of eq. 12 literally.
- η is the step size of the gradient term only; mixing happens once per iteration with unit
  weight, so the flow's time t counts iterations (eq. 8 with Euler step 1 is eq. 7).
- Reported losses are (1/(2D)) ‖f(X_q; θ_q) − y_q‖² per client: the seed's eq. 3/15 value,
  whatever c is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging
from jaxtyping import Float

from spark_tpu.topology import check_row_stochastic

from ._discrete import DISCRETE_UPDATES, discrete_trajectory
from ._flow import solve_flow
from ._linearize import Linearization, ModelFn, linearize

BAD_ALGORITHM = "algorithm={value!r}: choose one of {allowed}."
BAD_ETA = "eta={value!r}: the step size must be a positive finite number."
BAD_W_SHAPE = (
    "w has shape {shape}; expected [{q}, {q}] (static) or [steps, {q}, {q}] (one W per iteration) "
    "for {q} clients."
)
BAD_STEPS = (
    "steps={steps} but w holds {given} mixing matrices; give one W per iteration or omit steps."
)
NO_STEPS = "steps is required with a static w; got None."
BAD_Y = "y has shape {shape}; expected [{q}, {d}, ...] matching f's output shape {out} per example."


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in DISCRETE_UPDATES:
        raise ValueError(BAD_ALGORITHM.format(value=algorithm, allowed=sorted(DISCRETE_UPDATES)))


def mixing_sequence(w: np.ndarray, q: int, steps: int | None) -> tuple[np.ndarray, bool]:
    """Validates W and returns it as ``[steps, Q, Q]`` and whether it was static.

    Raises:
        ValueError: wrong shape, a step count that disagrees with the sequence, or a W that is
            not row-stochastic with a positive diagonal.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim not in (2, 3) or w.shape[-2:] != (q, q):
        raise ValueError(BAD_W_SHAPE.format(shape=w.shape, q=q))
    static = w.ndim == 2
    if static and steps is None:
        raise ValueError(NO_STEPS)
    if not static and steps is not None and steps != w.shape[0]:
        raise ValueError(BAD_STEPS.format(steps=steps, given=w.shape[0]))
    seq = np.broadcast_to(w, (steps, q, q)) if static else w
    for k, wk in enumerate(seq[:1] if static else seq):
        check_row_stochastic(wk, flag=f"w[{k}]" if not static else "w", atol=1e-10)
    return seq, static


def _reduced_targets(lin: Linearization, y: np.ndarray, d: int):
    """y flattened ``[Q, D·M]``, G_q = C_qᵀ C_q and g_q = C_qᵀ (f_0,q − y_q)."""
    q, n = lin.f0.shape
    y = np.asarray(y, dtype=np.float64)
    if y.size != q * n or y.shape[:2] != (q, d):
        raise ValueError(BAD_Y.format(shape=y.shape, q=q, d=d, out=lin.out_shape))
    y = y.reshape(q, n)
    c_t = lin.c_blocks.transpose(0, 2, 1)
    gram = c_t @ lin.c_blocks
    g0 = (c_t @ (lin.f0 - y)[:, :, None])[:, :, 0]
    return y, gram, g0


def _readout(lin: Linearization, z: np.ndarray, y: np.ndarray, d: int, kind: str) -> dict:
    """Outputs, losses and final parameters of a z trajectory ``[T+1, Q, r]``."""
    q = lin.f0.shape[0]
    out = lin.f0[None] + (lin.c_blocks @ z.transpose(1, 2, 0)).transpose(2, 0, 1)
    res = {
        f"z_{kind}": z,
        f"outputs_{kind}": out.reshape(z.shape[0], q, d, *lin.out_shape),
        f"loss_{kind}": 0.5 / d * np.sum((out - y[None]) ** 2, axis=-1),
        f"params_{kind}": lin.flat_params0[None] + z[-1] @ lin.basis.T,
    }
    if lin.c_test is not None:
        test = lin.f0_test[None, None] + z @ lin.c_test.T
        res[f"test_outputs_{kind}"] = test.reshape(z.shape[0], q, -1, *lin.out_shape)
    return res


def predict_linearized(
    lin: Linearization,
    y: Float[np.ndarray, "clients samples ..."],
    w: Float[np.ndarray, "... clients clients"],
    *,
    algorithm: str = "dgd",
    eta: float,
    steps: int | None = None,
    loss_scale: float | None = None,
    flow: bool = True,
) -> dict[str, Any]:
    """`predict` from a precomputed `Linearization` (reuse one θ_0 across graphs and algorithms).

    Args are as in `predict`; ``lin`` replaces ``model_fn``, ``params0`` and the inputs.
    """
    _check_algorithm(algorithm)
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(BAD_ETA.format(value=eta))
    q, n = lin.f0.shape
    w_seq, static = mixing_sequence(w, q, steps)
    d = n // max(1, int(np.prod(lin.out_shape)))
    c = 1.0 / d if loss_scale is None else float(loss_scale)
    y, gram, g0 = _reduced_targets(lin, y, d)
    result: dict[str, Any] = {
        "iterations": np.arange(w_seq.shape[0] + 1),
        "algorithm": algorithm,
        "eta": float(eta),
        "loss_scale": c,
        "rank": lin.rank,
        "eigenvalues": lin.eigenvalues,
        "basis": lin.basis,
        "flat_params0": lin.flat_params0,
    }
    z = discrete_trajectory(gram, g0, w_seq, algorithm, eta * c)
    result.update(_readout(lin, z, y, d, "discrete"))
    if flow and static:
        zf = solve_flow(gram, g0, w_seq[0], algorithm, eta * c, len(w_seq)).reshape(-1, q, lin.rank)
        result.update(_readout(lin, zf, y, d, "flow"))
    logging.debug(
        "predict: %s, Q=%d, r=%d, %d steps, flow=%s",
        algorithm,
        q,
        lin.rank,
        len(w_seq),
        flow and static,
    )
    return result


def predict(
    model_fn: ModelFn,
    params0: Any,
    client_data: tuple[np.ndarray, np.ndarray],
    w: Float[np.ndarray, "... clients clients"],
    *,
    algorithm: str = "dgd",
    eta: float,
    steps: int | None = None,
    loss_scale: float | None = None,
    test_x: np.ndarray | None = None,
    flow: bool = True,
    rank_rtol: float | None = None,
) -> dict[str, Any]:
    r"""Predicts every client's loss, outputs and parameters under DGD, ATC or CTA (docs/dynamics.md).

    Linearizes all clients at the shared θ_0 (seed eq. 11), reduces exactly to Q·r coordinates
    (`linearize`), then runs the discrete recursion (eqs. 7a–c, any row-stochastic W or one W per
    iteration) and, for a static W, the closed-form gradient flow (eqs. 12–14). Conventions for
    η, c and the reported loss are in this module's docstring.

    Args:
        model_fn: ``f(params, x)`` on one unbatched example, returning a scalar or ``[M]``.
        params0: the shared initialization θ_0 (any pytree of float arrays).
        client_data: ``(x [Q, D, ...], y [Q, D] or [Q, D, M])``.
        w: a static row-stochastic ``[Q, Q]`` mixing matrix or a sequence ``[steps, Q, Q]``.
        algorithm: ``'dgd'`` (eq. 4), ``'atc'`` (eq. 5) or ``'cta'`` (eq. 6).
        eta: the step size η.
        steps: iterations T (required for a static W; defaults to ``len(w)`` for a sequence).

    Other args:
        loss_scale: c in L_q = (c/2)‖f_q − y_q‖²; default 1/D (seed eq. 3), 1/(DQ) for eq. 12.
        test_x: optional inputs ``[N, ...]``; their predicted outputs per client are returned.
        flow: also solve the gradient flow (static W only; ignored for a sequence).
        rank_rtol: relative eigenvalue cut-off for r = rank K (default Q·D·M·eps).

    Returns:
        A dict with ``iterations [T+1]``; for ``kind`` in ``discrete`` and (static W, flow)
        ``flow``: ``loss_{kind} [T+1, Q]``, ``outputs_{kind} [T+1, Q, D, ...]``,
        ``params_{kind} [Q, P]`` (final θ_q, flat; ``lin.unravel`` / ``ravel_pytree`` inverts),
        ``z_{kind} [T+1, Q, r]``, ``test_outputs_{kind} [T+1, Q, N, ...]`` if test_x; and
        ``rank``, ``eigenvalues``, ``basis [P, r]`` (θ_q(t) = flat_params0 + basis @ z_q(t)),
        ``flat_params0``, ``algorithm``, ``eta``, ``loss_scale``.

    Raises:
        ValueError: an unknown algorithm, η ≤ 0, a W of the wrong shape or not row-stochastic,
            steps inconsistent with W, or y not matching x and f.

    Examples:
        >>> import jax, numpy as np
        >>> from spark_tpu import dynamics, topology
        >>> x = np.random.default_rng(0).normal(size=(4, 5, 3)); y = x.sum(-1)
        >>> f = lambda p, xi: xi @ p["w"] + p["b"]
        >>> p0 = {"w": np.zeros(3), "b": np.zeros(())}
        >>> w = topology.metropolis_hastings(topology.ring(4))
        >>> out = dynamics.predict(f, p0, (x, y), w, algorithm="atc", eta=0.1, steps=20)
        >>> out["loss_discrete"].shape, out["loss_flow"].shape, out["rank"]
        ((21, 4), (21, 4), 4)

    References:
        Chaudhari, Pranav, Anand, Moura, "Peer-to-Peer Learning Dynamics of Wide Neural
        Networks", ICASSP 2025 (arXiv 2409.15267), eqs. 4–14.
    """
    x, y = client_data
    lin = linearize(model_fn, params0, x, x_test=test_x, rank_rtol=rank_rtol)
    return predict_linearized(
        lin, y, w, algorithm=algorithm, eta=eta, steps=steps, loss_scale=loss_scale, flow=flow
    )
