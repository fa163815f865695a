"""Function-space solver, objectives and the MSE closed form against independent truth (docs/ntk_step.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from sklearn.datasets import load_digits

from spark_tpu.models import MLP
from spark_tpu.ntk import (
    cross_entropy,
    evolve_mse_closed_form,
    lr_schedule,
    mse,
    soft_label_regularized,
    solve_function_space,
    trace_kernel,
)

F64 = jnp.float64
# The dtypes a solver test runs in: float64, and float32, the production dtype. A float32 problem
# is the float64 one rounded to float32; its truth (DOP853, numpy) is computed in float64 from the
# rounded values, so a float32 test measures the float32 arithmetic alone.
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])


def _softmax(f):
    p = np.exp(f - f.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def digits_problem():
    """A digits MLP kernel scaled to the paper's stiffness η·λ_max(K)/Ñ = 3.6 (docs/ntk_step.md §8)."""
    n, c = 60, 10
    x, labels = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).choice(len(x), n, replace=False)
    x = (x[idx] - x.mean()) / x.std()
    model = MLP((64,), hidden=(32,), num_classes=c, key=jax.random.key(0), dtype=F64)
    xs = jnp.asarray(x, F64)
    kernel = np.asarray(trace_kernel(model, xs))
    f0 = np.asarray(jax.vmap(model)(xs))
    y = np.eye(c)[labels[idx]]
    eta = 3.6 * n / np.linalg.eigvalsh(kernel)[-1]
    return kernel, f0, y, eta


def _dop853(kernel, f0, y, eta, steps):
    n, c = f0.shape

    def rhs(_, v):
        return (-(kernel @ (_softmax(v.reshape(n, c)) - y)) / n).ravel()

    grid = np.arange(steps + 1) * eta
    sol = scipy.integrate.solve_ivp(
        rhs, (0, grid[-1]), f0.ravel(), method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-12
    )
    return sol.y.T.reshape(steps + 1, n, c)


def _solve(kernel, f0, y, eta, horizons, **options):
    fn = jax.jit(
        lambda k, f: solve_function_space(
            k, f, cross_entropy(jnp.asarray(y)).residual, eta=eta, horizons=horizons,
            num_samples=f0.shape[0], **options,
        )
    )  # fmt: skip
    return jax.tree.map(np.asarray, fn(jnp.asarray(kernel), jnp.asarray(f0)))


def _as(problem, dtype):
    """The problem's arrays in ``dtype`` (η stays a Python float, as the simulator passes it)."""
    kernel, f0, y, eta = problem
    return kernel.astype(dtype), f0.astype(dtype), y.astype(dtype), eta


def _grid_errors(problem, steps, **options):
    """Max relative errors of the logits and residual sums at *every* grid point 1..steps against
    DOP853 (rtol 1e-10), plus the solution and the reference's largest displacement."""
    kernel, f0, y, eta = problem
    ref = _dop853(kernel, f0, y, eta, steps)
    ref_sums = np.cumsum(_softmax(ref[:-1]) - y, axis=0)
    displacement = np.linalg.norm(ref - ref[0], axis=(1, 2)).max()
    sol = _solve(kernel, f0, y, eta, tuple(range(1, steps + 1)), **options)
    f_err = np.linalg.norm(sol.logits - ref[1:], axis=(1, 2)).max() / displacement
    r_err = np.max(
        np.linalg.norm(sol.residual_sums - ref_sums, axis=(1, 2))
        / np.linalg.norm(ref_sums, axis=(1, 2))
    )
    return (f_err, r_err), sol, ref, displacement


def test_default_solver_matches_dop853_at_reference_stiffness(digits_problem):
    def errors(**options):
        return _grid_errors(digits_problem, 100, **options)[0]

    assert max(errors()) <= 1e-4  # the adaptive default
    assert max(errors(solver="rk4")) <= 1e-4  # rk4 at stride 1 with its warm-up
    assert max(errors(solver="dopri5")) <= 1e-4
    # The same checks do reject inaccurate solutions: Euler is off by percents here.
    assert min(errors(solver="euler")) > 1e-2


def test_euler_is_discrete_gradient_descent_of_linearized_model(digits_problem):
    kernel, f0, y, eta = digits_problem
    mask = np.arange(f0.shape[0]) % 7 != 3
    kernel = kernel * np.outer(mask, mask)
    n_valid = mask.sum()
    f, running, sums, logits = f0.copy(), np.zeros_like(f0), {}, {}
    horizons = (0, 5, 1, 12)
    for t in range(max(horizons) + 1):
        if t in horizons:
            sums[t], logits[t] = running.copy(), f.copy()
        res = (_softmax(f) - y) * mask[:, None]
        running += res
        f = f - eta / n_valid * kernel @ res
    obj = cross_entropy(jnp.asarray(y), jnp.asarray(mask))
    sol = solve_function_space(
        jnp.asarray(kernel), jnp.asarray(f0), obj.residual, eta=eta, horizons=horizons,
        num_samples=n_valid, solver="euler",
    )  # fmt: skip
    np.testing.assert_allclose(sol.residual_sums, np.stack([sums[t] for t in horizons]), rtol=1e-12)
    np.testing.assert_allclose(sol.logits, np.stack([logits[t] for t in horizons]), rtol=1e-12)
    np.testing.assert_allclose(sol.final_logits, logits[12], rtol=1e-12)
    np.testing.assert_array_equal(sol.residual_sums[0], 0.0)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("bosh3", 3), ("rk4", 4)])
def test_convergence_order(digits_problem, solver, order):
    kernel, f0, y, eta = digits_problem
    eta = eta / 3.6  # asymptotic regime: stiffness 1 per grid step
    ref = _dop853(kernel, f0, y, eta, 20)[-1]
    errs = [
        np.linalg.norm(
            _solve(kernel, f0, y, eta, (20,), solver=solver, substeps=s, warmup_steps=0)
            .final_logits - ref
        )
        for s in (4, 8)
    ]  # fmt: skip
    assert order - 0.3 <= np.log2(errs[0] / errs[1]) <= order + 0.5


# Float32: the closed form diagonalizes K, whose valid block has condition number 27 here, so its
# round-off is about eps32 · cond(K) ≈ 3e-6 of the residual's size: atol 1e-5 · max|u0| (measured:
# 6e-7). Float64 keeps its relative tolerances.
@DTYPES
def test_mse_closed_form_matches_expm(dtype):
    rng = np.random.default_rng(1)
    n, c = 12, 3
    a = rng.normal(size=(n, 20))
    mask = np.arange(n) < 10
    kernel = ((a @ a.T + 1.0) * np.outer(mask, mask)).astype(dtype)
    f0, y = rng.normal(size=(n, c)).astype(dtype), rng.normal(size=(n, c)).astype(dtype)
    eta, horizons, n_valid = 0.05, (0, 3, 17), mask.sum()
    sol = evolve_mse_closed_form(
        jnp.asarray(kernel), jnp.asarray(f0), jnp.asarray(y), jnp.asarray(mask), eta=eta,
        horizons=horizons,
    )  # fmt: skip
    assert sol.logits.dtype == dtype
    kernel, f0, y = (v.astype(np.float64) for v in (kernel, f0, y))  # the truth: float64
    u0 = (f0 - y) * mask[:, None]
    tol = (dict(rtol=1e-9, atol=1e-12) if dtype == np.float64
           else dict(rtol=0, atol=1e-5 * np.abs(u0).max()))  # fmt: skip
    step = scipy.linalg.expm(-eta * kernel / n_valid)
    for h, tau in enumerate(horizons):
        powers = [np.linalg.matrix_power(step, t) @ u0 for t in range(tau)]
        expected_sum = np.sum(powers, axis=0) if powers else np.zeros_like(u0)
        expected_f = f0 + scipy.linalg.expm(-tau * eta * kernel / n_valid) @ u0 - u0
        np.testing.assert_allclose(sol.residual_sums[h], expected_sum, **tol)
        np.testing.assert_allclose(sol.logits[h], expected_f, **tol)
    # The ODE solver on the MSE objective agrees (substeps for the undamped stiffness).
    k, f, t = (jnp.asarray(v, dtype) for v in (kernel, f0, y))
    ode = solve_function_space(
        k, f, mse(t, jnp.asarray(mask)).residual,
        eta=eta, horizons=horizons, num_samples=n_valid, solver="rk4", substeps=16,
    )  # fmt: skip
    ode_tol = dict(rtol=1e-7, atol=1e-10) if dtype == np.float64 else tol
    np.testing.assert_allclose(ode.residual_sums, sol.residual_sums, **ode_tol)


# (dtype, residual rtol and atol, loss rtol). In float32 a residual entry is a difference of
# softmax probabilities and labels (magnitude ≤ 1, or ≤ |f − y| ≈ 5 for mse) computed in a few
# operations, so its absolute round-off is a few eps32 ≈ 1.2e-7: atol 1e-6, rtol 1e-5; a loss is
# a mean of 6 such terms and logs of them: rtol 1e-6 (the float64 numbers are unchanged).
OBJECTIVE_TOLS = [(np.float64, 1e-10, 1e-13, 1e-12), (np.float32, 1e-5, 1e-6, 1e-6)]


def _check_residual_is_scaled_gradient(objective, f, n_valid, rtol, atol):
    grad = jax.grad(objective.loss)(f)
    np.testing.assert_allclose(objective.residual(f), n_valid * grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype, rtol, atol, loss_rtol", OBJECTIVE_TOLS)
def test_objective_residuals_are_scaled_loss_gradients(dtype, rtol, atol, loss_rtol):
    rng = np.random.default_rng(2)
    n, c = 9, 4
    f = jnp.asarray(rng.normal(size=(n, c)) * 2, dtype)
    y = jnp.asarray(np.eye(c)[rng.integers(0, c, n)], dtype)
    teacher = jnp.asarray(rng.normal(size=(n, c)), dtype)
    mask = jnp.arange(n) % 3 != 0
    for objective in (cross_entropy(y, mask), mse(y, mask)):
        assert objective.residual(f).dtype == dtype
        _check_residual_is_scaled_gradient(objective, f, 6, rtol, atol)
        np.testing.assert_array_equal(np.asarray(objective.residual(f))[~np.asarray(mask)], 0.0)

    @jax.jit
    def traced(weight, temperature):  # λ and T arrive traced, as when annealed per round
        obj = soft_label_regularized(y, teacher, mask, weight=weight, temperature=temperature)
        return obj.residual(f), 6 * jax.grad(obj.loss)(f), obj.loss(f)

    residual, grad, loss = traced(jnp.asarray(0.3, dtype), jnp.asarray(2.5, dtype))
    assert residual.dtype == loss.dtype == dtype
    np.testing.assert_allclose(residual, grad, rtol=rtol, atol=atol)
    # Against the formula of docs/spark.md §3, written out in numpy (float64).
    fn, yn, gn, m = (np.asarray(a, np.float64) for a in (f, y, teacher, mask))
    m = m.astype(bool)
    ce = -(yn * np.log(_softmax(fn))).sum(-1)
    pt, ps = _softmax(gn / 2.5), _softmax(fn / 2.5)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(-1)
    expected = (0.7 * ce + 0.3 * 2.5**2 * kl)[m].mean()
    np.testing.assert_allclose(loss, expected, rtol=loss_rtol)
    plain = soft_label_regularized(y, teacher, mask, weight=0.0, temperature=2.0)
    np.testing.assert_allclose(plain.loss(f), cross_entropy(y, mask).loss(f), rtol=loss_rtol)


def test_solver_vmaps_over_clients_and_validates(digits_problem):
    kernel, f0, y, eta = digits_problem
    kernels = jnp.stack([jnp.asarray(kernel), 0.5 * jnp.asarray(kernel)])
    f0s = jnp.stack([jnp.asarray(f0), -jnp.asarray(f0)])
    etas = jnp.asarray([eta, 0.5 * eta])  # traced, decaying per round in the simulator

    def one(k, f, e):
        return solve_function_space(
            k, f, cross_entropy(jnp.asarray(y)).residual, eta=e, horizons=(3, 7), num_samples=60
        )

    batched = jax.jit(jax.vmap(one))(kernels, f0s, etas)
    for q in range(2):
        single = one(kernels[q], f0s[q], etas[q])
        np.testing.assert_allclose(batched.residual_sums[q], single.residual_sums, rtol=1e-12)
    with pytest.raises(ValueError, match="horizons"):
        solve_function_space(
            kernels[0], f0s[0], lambda f: f, eta=eta, horizons=(-1, 2), num_samples=60
        )
    with pytest.raises(ValueError, match="Unknown solver 'rk5'"):
        solve_function_space(
            kernels[0], f0s[0], lambda f: f, eta=eta, horizons=(2,), num_samples=60, solver="rk5"
        )


def test_lr_schedule_decays_exponentially():
    schedule = lr_schedule(0.01, 0.07)
    np.testing.assert_allclose(schedule(0), 0.01, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(schedule)(jnp.asarray(5)), 0.01 * np.exp(-0.35), rtol=1e-6)
    assert schedule(3).dtype == jnp.float32


# Float32 keeps the float64 tolerances of the two tests below. The flow is non-expansive (K and
# the softmax Jacobian are positive semi-definite), so a round-off of eps32 ≈ 1.2e-7 relative per
# step adds up at most linearly: ≤ 256 steps × eps32 × max‖f‖/displacement (2.72 here) ≈ 8e-5,
# under the 1e-4. Measured: float32 moves the logits by ≤ 1.4e-6 of the displacement and the
# residual sums by ≤ 8e-6 (relative) from float64, well inside the discretization error.
@DTYPES
@pytest.mark.parametrize("stride, tol", [(2, 1e-4), (3, 1e-4), (4, 1e-4)])
def test_strided_solver_matches_dop853_at_every_grid_point(digits_problem, stride, tol, dtype):
    """Steps of stride·η after the first 32 grid steps, with Hermite-interpolated residuals at
    the grid points inside each step: logits and residual sums at *every* horizon (interior grid
    points, step ends, and the single-step remainder 160 - 32 = 128 ≢ 0 mod 3) against DOP853."""
    problem = _as(digits_problem, dtype)
    errors, sol, ref, displacement = _grid_errors(problem, 160, solver="rk4", stride=stride)
    assert sol.logits.dtype == dtype
    assert max(errors) <= tol, errors
    np.testing.assert_allclose(sol.final_logits, ref[-1], atol=tol * displacement)


@pytest.mark.parametrize("solver, stride, tol", [("rkc4", 8, 2e-3), ("rkc6", 16, 5e-3)])
def test_chebyshev_solvers_stay_stable_at_long_strides(digits_problem, solver, stride, tol):
    """Where rk4 blows up (stride 16, below), Runge–Kutta–Chebyshev stays within its 2nd-order
    accuracy of DOP853 at every grid point."""
    errors, sol, ref, displacement = _grid_errors(digits_problem, 160, stride=stride, solver=solver)
    assert max(errors) <= tol, errors


def test_strided_solver_fails_visibly_when_too_coarse(digits_problem):
    """The same comparison rejects a stride past rk4's stability limit (the check can fail)."""
    kernel, f0, y, eta = digits_problem
    ref = _dop853(kernel, f0, y, eta, 96)
    sol = _solve(kernel, f0, y, eta, (96,), solver="rk4", stride=16, stride_from=0)
    err = np.linalg.norm(sol.logits[0] - ref[-1]) / np.linalg.norm(ref[-1] - ref[0])
    assert not err <= 1e-2  # NaN (blown up) or far off
    with pytest.raises(ValueError, match="stride"):
        _solve(kernel, f0, y, eta, (10,), solver="rk4", stride=0)
    assert sol.flagged  # and the solver itself reports that its step left the accuracy region


def test_rkc_tableau_is_the_chebyshev_method():
    """The Butcher form of Runge–Kutta–Chebyshev (`ntk.rkc_tableau`, solvers rkc4 and rkc6) has the
    method's closed-form stability polynomial a + b·T_s(w0 + w1·z) and is 2nd order."""
    from numpy.polynomial import chebyshev

    from spark_tpu.ntk import rkc_tableau

    for s in (3, 4, 6, 8):
        tab = rkc_tableau(s, damping=0.05)
        a = np.zeros((s, s))
        for k, row in enumerate(tab.a):
            a[k, : len(row)] = row
        b = np.asarray(tab.b)
        c = a.sum(axis=1)
        assert abs(b.sum() - 1) < 1e-12 and abs(b @ c - 0.5) < 1e-12  # order 2
        w0 = 1 + 0.05 / s**2
        ts = chebyshev.Chebyshev.basis(s)
        w1 = ts.deriv()(w0) / ts.deriv(2)(w0)
        bs = ts.deriv(2)(w0) / ts.deriv()(w0) ** 2
        for z in np.linspace(-0.6 * s * s, 0, 41):
            r = 1 + z * b @ np.linalg.solve(np.eye(s) - z * a, np.ones(s))
            assert abs(r - (1 - bs * ts(w0) + bs * ts(w0 + w1 * z))) < 1e-9
            assert abs(r) <= 1 + 1e-9  # stable on [-0.6·s², 0]


@pytest.fixture(scope="module")
def stiff_problem(digits_problem):
    """A neighbourhood stiff where it hurts: the digits kernel's isolated top eigenvalue at
    η·λ_max(K)/Ñ = 3.6, and every sample split between the same two classes (soft labels
    0.7/0.3, logits peaked on both), so the softmax Jacobian keeps an eigenvalue of 2·0.7·0.3 =
    0.42 along the stiff direction for the whole horizon: η·ρ = 1.5 per grid interval, inside
    RK4's stability interval (2.79) at stride 1 and far outside it at stride 4."""
    kernel, f0, _, eta = digits_problem
    n, c = f0.shape
    y = np.zeros((n, c))
    y[:, 0], y[:, 1] = 0.7, 0.3
    f = f0.copy()
    f[:, :2] += 3.0
    return kernel, f, y, eta


def test_fixed_stride_blows_up_on_stiff_neighbourhood_and_says_so(stiff_problem):
    """What the old default (rk4, stride 4) did on such a neighbourhood: far off DOP853, and
    (now) flagged; rk4 at stride 1 is accurate and not flagged."""
    errors, sol, _, _ = _grid_errors(stiff_problem, 160, solver="rk4", stride=4)
    assert not max(errors) <= 1e-2 and sol.flagged
    errors, sol, _, _ = _grid_errors(stiff_problem, 160, solver="rk4", stride=1)
    assert max(errors) <= 1e-4 and not sol.flagged


@DTYPES
@pytest.mark.parametrize("problem", ["digits_problem", "stiff_problem"])
def test_adaptive_solver_matches_dop853_at_every_grid_point(problem, request, dtype):
    """The default solver on both: logits and residual sums at every grid point within 1e-4 of
    DOP853 (rtol 1e-10), with fewer kernel products than rk4 at stride 1 in float64. (In float32
    the controller's error estimates sit nearer round-off and it took 1,025 products on the stiff
    problem against 717 in float64, when measured; only its accuracy is held to float64's.)"""
    problem = _as(request.getfixturevalue(problem), dtype)
    errors, sol, ref, displacement = _grid_errors(problem, 160, solver="adaptive")
    assert sol.logits.dtype == dtype
    assert max(errors) <= 1e-4, errors
    np.testing.assert_allclose(sol.final_logits, ref[-1], atol=1e-4 * displacement)
    assert not sol.flagged and 0 < int(sol.products)
    if dtype == np.float64:
        assert int(sol.products) < 736  # rk4 / 1: 736


def test_adaptive_solver_error_follows_its_tolerance(digits_problem):
    """Tightening rtol tightens the error (the controller is what sets the accuracy), at the
    price of more products; a fixed-step option is refused rather than ignored."""
    loose, sol_loose, _, _ = _grid_errors(digits_problem, 100, rtol=1e-3)
    tight, sol_tight, _, _ = _grid_errors(digits_problem, 100, rtol=1e-7)
    assert max(tight) < max(loose) / 20 and int(sol_tight.products) > int(sol_loose.products)
    kernel, f0, y, eta = digits_problem
    with pytest.raises(ValueError, match="chooses its own steps"):
        _solve(kernel, f0, y, eta, (10,), stride=4)


def test_euler_refuses_a_stride(digits_problem):
    """Euler is discrete gradient descent of the linearized model: one step per grid interval,
    whatever else is asked."""
    kernel, f0, y, eta = digits_problem
    with pytest.raises(ValueError, match="discrete gradient descent"):
        _solve(kernel, f0, y, eta, (40,), solver="euler", stride=4)


@pytest.mark.parametrize("problem", ["digits_problem", "stiff_problem"])
def test_exponential_solver_matches_dop853_at_every_grid_point(problem, request):
    """The exponential solver (stiff eigenspace of K integrated exactly, `solve_exponential`) on
    both, including the split-softmax neighbourhood that keeps its stiff direction undamped for
    the whole horizon: logits and residual sums at every grid point within 1e-4 of DOP853
    (rtol 1e-10), at under half of the adaptive solver's kernel products."""
    prob = request.getfixturevalue(problem)
    errors, sol, ref, displacement = _grid_errors(prob, 160, solver="exponential")
    assert max(errors) <= 1e-4, errors
    np.testing.assert_allclose(sol.final_logits, ref[-1], atol=1e-4 * displacement)
    adaptive = _solve(*prob, (160,), solver="adaptive")
    assert not sol.flagged and 0 < int(sol.products) < int(adaptive.products) / 2


def test_auto_solver_is_exponential_from_512_rows_and_adaptive_below():
    """The default, ``auto``, is the exponential solver on 512 pooled rows or more and the
    adaptive one below (a kernel product is cheap there beside the exponential step's fixed
    work): the same residual sums and kernel products as naming each, on a random PSD kernel
    at 511 and 512 rows."""
    from spark_tpu import ntk

    assert ntk.AUTO_EXPONENTIAL_ROWS == 512
    rng = np.random.default_rng(3)
    for n, expected in ((511, "adaptive"), (512, "exponential")):
        a = rng.normal(size=(n, 40)) / np.sqrt(40)
        kernel = a @ a.T
        f0 = rng.normal(size=(n, 4))
        y = np.eye(4)[rng.integers(0, 4, n)]
        eta = 2.0 * n / np.linalg.eigvalsh(kernel)[-1]
        auto = _solve(kernel, f0, y, eta, (3, 12))
        named = _solve(kernel, f0, y, eta, (3, 12), solver=expected)
        other = _solve(kernel, f0, y, eta, (3, 12),
                       solver={"adaptive": "exponential", "exponential": "adaptive"}[expected])
        np.testing.assert_array_equal(auto.residual_sums, named.residual_sums)
        assert int(auto.products) == int(named.products) != int(other.products)


def test_exponential_solver_is_exact_on_a_linear_flow():
    """With the whole spectrum deflated (rank = N) and a linear residual (MSE), the split leaves
    a constant remainder, which the exponential method integrates exactly: the weight-step sums
    and logits are the closed form's, at steps of up to 64 grid intervals, and masked rows stay
    untouched. Checks the φ functions, the low-rank operator algebra and the dense output."""
    rng = np.random.default_rng(1)
    n, c = 12, 3
    a = rng.normal(size=(n, 20))
    mask = np.arange(n) < 10
    kernel = (a @ a.T / 20 + 1.0) * np.outer(mask, mask)
    f0, y = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    horizons, n_valid = (0, 3, 17, 200), mask.sum()
    eta = 0.5 * n_valid / np.linalg.eigvalsh(kernel)[-1]  # stiff: 200 grid steps reach e^-100
    exact = evolve_mse_closed_form(
        jnp.asarray(kernel), jnp.asarray(f0), jnp.asarray(y), jnp.asarray(mask), eta=eta,
        horizons=horizons,
    )  # fmt: skip
    sol = solve_function_space(
        jnp.asarray(kernel), jnp.asarray(f0), mse(jnp.asarray(y), jnp.asarray(mask)).residual,
        eta=eta, horizons=horizons, num_samples=n_valid, solver="exponential", rank=n,
        krylov_depth=n // c, max_stride=64,
    )  # fmt: skip
    np.testing.assert_allclose(sol.residual_sums, exact.residual_sums, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sol.logits, exact.logits, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(sol.final_logits[~mask], f0[~mask])
    assert int(sol.products) < 40  # 1 + 4 Krylov blocks + a few 4-stage steps


def test_exponential_solver_linearizes_alike_with_and_without_a_closed_form_jacobian(
    stiff_problem,
):
    """A residual without a closed-form row Jacobian (a plain callable: one JVP per class, the
    route a user's own objective takes) steps exactly as the built-in one (`RowResidual.jacobian`)."""
    kernel, f0, y, eta = stiff_problem
    residual = cross_entropy(jnp.asarray(y)).residual
    kw = {"eta": eta, "horizons": (7, 90), "num_samples": f0.shape[0], "solver": "exponential"}
    closed = solve_function_space(jnp.asarray(kernel), jnp.asarray(f0), residual, **kw)
    plain = solve_function_space(jnp.asarray(kernel), jnp.asarray(f0), lambda f: residual(f), **kw)
    np.testing.assert_allclose(plain.residual_sums, closed.residual_sums, rtol=1e-9, atol=1e-12)
    assert int(plain.products) == int(closed.products)


def test_exponential_dense_buckets_cover_every_grid_point_of_a_step():
    """`grid_points_covered` (which picks the dense-output bucket) against a count by hand of
    the grid points t·4 in [pos, pos + step), every pos and step up to 33 grid intervals."""
    from spark_tpu.ntk._exponential import UNITS, grid_points_covered

    pos, step = np.meshgrid(np.arange(0, 40), np.arange(1, 33 * UNITS + 1), indexing="ij")
    got = np.asarray(grid_points_covered(jnp.asarray(pos), jnp.asarray(step)))
    want = np.array([[sum(p <= UNITS * t < p + s for t in range(60)) for s in row_s]
                     for p, row_s in zip(pos[:, 0], step)])  # fmt: skip
    np.testing.assert_array_equal(got, want)


def test_exponential_solver_bucketed_dense_output_matches_full_width(stiff_problem, monkeypatch):
    """The dense output evaluated per bucket gives the sums and snapshots of evaluating all
    max_stride points on every step (no buckets), at every grid point."""
    from spark_tpu.ntk import _exponential

    kernel, f0, y, eta = stiff_problem
    residual = cross_entropy(jnp.asarray(y)).residual
    kw = {"eta": eta, "horizons": tuple(range(1, 121)), "num_samples": f0.shape[0],
          "solver": "exponential"}
    bucketed = solve_function_space(jnp.asarray(kernel), jnp.asarray(f0), residual, **kw)
    monkeypatch.setattr(_exponential, "_DENSE_BUCKETS", ())
    full = solve_function_space(jnp.asarray(kernel), jnp.asarray(f0), residual, **kw)
    np.testing.assert_allclose(bucketed.residual_sums, full.residual_sums, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bucketed.logits, full.logits, rtol=1e-10, atol=1e-12)
    assert int(bucketed.products) == int(full.products)


def test_exponential_solver_vmaps_over_clients(digits_problem):
    """Per-client while loops under vmap: each client's result and product count are its own."""
    kernel, f0, y, eta = digits_problem
    kernels = jnp.stack([jnp.asarray(kernel), 0.3 * jnp.asarray(kernel)])
    f0s = jnp.stack([jnp.asarray(f0), -jnp.asarray(f0)])

    def one(k, f):
        return solve_function_space(
            k, f, cross_entropy(jnp.asarray(y)).residual, eta=eta, horizons=(3, 70),
            num_samples=60, solver="exponential",
        )  # fmt: skip

    batched = jax.jit(jax.vmap(one))(kernels, f0s)
    for q in range(2):
        single = one(kernels[q], f0s[q])
        np.testing.assert_allclose(batched.residual_sums[q], single.residual_sums, rtol=1e-10)
        # the horizon snapshots too (taken under a batch-wide lax.cond, `batch_any`)
        np.testing.assert_allclose(batched.logits[q], single.logits, rtol=1e-10)
        np.testing.assert_allclose(batched.final_logits[q], single.final_logits, rtol=1e-10)
        assert int(batched.products[q]) == int(single.products)
    assert int(batched.products[0]) != int(batched.products[1])
    with pytest.raises(ValueError, match="chooses its own steps"):
        _solve(kernel, f0, y, eta, (10,), solver="exponential", stride=4)
