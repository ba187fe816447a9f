"""Closed-form checks of the shared engine: couplings, paths, the ODE solver, the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sctraj.engine import couplings, paths, solvers
from sctraj.engine.nn import VectorField
from sctraj.engine.trainer import train


def test_exact_ot_recovers_permutation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    perm = rng.permutation(50)
    plan = couplings.exact_plan(x, x[perm])
    # plan[i, j] > 0 iff x[i] == x[perm][j], i.e. j = inverse-perm[i]
    inv = np.argsort(perm)
    assert np.array_equal(plan.argmax(1), inv)
    np.testing.assert_allclose(plan.sum(1), 1 / 50)
    np.testing.assert_allclose(plan.sum(0), 1 / 50)


def _marginal_l1(plan, a, b):
    return np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()


def test_entropic_plan_marginals_and_limit():
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) + 1
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    plan = couplings.entropic_plan(x0, x1, reg=0.05)
    assert _marginal_l1(plan, a, b) <= 1e-4  # the default tol
    tight = couplings.entropic_plan(x0, x1, reg=0.05, tol=1e-9)
    np.testing.assert_allclose(tight.sum(1), a, atol=1e-9)
    np.testing.assert_allclose(tight.sum(0), b, atol=1e-9)
    # large regularisation tends to the independent coupling
    flat = couplings.entropic_plan(x0, x1, reg=1e4)
    np.testing.assert_allclose(flat, 1 / 1200, rtol=1e-2)


def test_entropic_plan_is_the_log_domain_plan_at_any_offset():
    import ot

    rng = np.random.default_rng(2)
    x0, x1 = rng.normal(size=(60, 3)), rng.normal(size=(50, 3)) * 0.7 + 0.5
    a, b = np.full(60, 1 / 60), np.full(50, 1 / 50)
    for reg in (0.02, 0.5):
        ref = ot.sinkhorn(a, b, couplings.sq_cost(x0, x1), reg, method="sinkhorn_log", numItermax=100_000,
                          stopThr=1e-12)
        # the plan does not change when the target is translated (the cost changes by row and column constants),
        # even 100 units away, where exp(-cost / reg) underflows to 0 everywhere in double precision
        for shift in (0.0, 100.0):
            plan = couplings.entropic_plan(x0, x1 + shift, reg=reg)
            assert np.abs(plan - ref).sum() < 2e-3
            assert _marginal_l1(plan, a, b) <= 1e-4


def test_entropic_plan_where_plain_sinkhorn_stalls():
    import warnings

    import ot

    # 5-d snapshots with squared distances up to ~100 at reg 0.02 (the bundled EB data at sbcfm's default): plain
    # Sinkhorn does not reach the marginals in 2000 iterations
    rng = np.random.default_rng(3)
    x0, x1 = rng.normal(size=(150, 5)), rng.normal(size=(120, 5)) * 1.3 + 0.7
    a, b = np.full(150, 1 / 150), np.full(120, 1 / 120)
    reg = 0.02
    M = couplings.sq_cost(x0, x1)
    M -= M.min(1, keepdims=True)
    M -= M.min(0, keepdims=True)
    plain = ot.sinkhorn(a, b, M, reg, numItermax=2000, stopThr=1e-9, warn=False)
    assert not _marginal_l1(plain, a, b) <= 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no solver notice reaches the user
        plan = couplings.entropic_plan(x0, x1, reg=reg)
    assert _marginal_l1(plan, a, b) <= 1e-4
    # the entropic plan is the one with these marginals of the form exp((f_i + g_j - M_ij) / reg): log(plan) + M / reg
    # is a sum of a row and a column term (checked by double centring, on the entries that carry the mass)
    keep = plan > 1e-8 * plan.max()
    L = np.where(keep, np.log(np.where(keep, plan, 1.0)) + M / reg, 0.0)
    w = keep.astype(float)
    f, g = np.zeros(150), np.zeros(120)
    for _ in range(200):  # weighted least squares of L ~ f_i + g_j on the kept entries
        f = ((L - g[None, :]) * w).sum(1) / w.sum(1)
        g = ((L - f[:, None]) * w).sum(0) / w.sum(0)
    assert np.abs((L - f[:, None] - g[None, :]) * w).max() < 1e-3


def test_entropic_plan_truncated_kernel_is_the_dense_plan(monkeypatch):
    # at a small reg in 10-d the plan is sparse: the last stage runs on the truncated kernel, and gives the plan of the
    # dense iterations
    rng = np.random.default_rng(6)
    x0, x1 = rng.normal(size=(120, 10)), rng.normal(size=(100, 10)) + 0.3
    a, b = np.full(120, 1 / 120), np.full(100, 1 / 100)
    used = []
    real = couplings._sparse_sinkhorn

    def spy(*args, **kw):
        used.append(real(*args, **kw))
        return used[-1]

    monkeypatch.setattr(couplings, "_sparse_sinkhorn", spy)
    sparse = couplings.entropic_plan(x0, x1, reg=0.02, tol=1e-5)
    assert len(used) == 1 and used[0] is not None
    dense = couplings.entropic_plan(x0, x1, reg=0.02, tol=1e-5, trunc=0)
    assert len(used) == 1  # trunc=0: dense iterations only
    assert _marginal_l1(sparse, a, b) <= 1e-5 and _marginal_l1(dense, a, b) <= 1e-5
    assert np.abs(sparse - dense).sum() < 1e-5


def test_entropic_plan_falls_back_to_the_log_domain(monkeypatch):
    import ot

    rng = np.random.default_rng(5)
    x0, x1 = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) + 0.5
    a, b = np.full(30, 1 / 30), np.full(25, 1 / 25)
    ref = couplings.entropic_plan(x0, x1, reg=0.1)
    real = ot.sinkhorn

    def broken(*args, method="sinkhorn", **kw):  # plain Sinkhorn out of floating-point range
        out = real(*args, method=method, **kw)
        if method == "sinkhorn":
            out[1]["u"] = out[1]["u"] * np.nan
        return out

    monkeypatch.setattr(couplings.ot, "sinkhorn", broken)
    plan = couplings.entropic_plan(x0, x1, reg=0.1)
    assert np.isfinite(plan).all() and _marginal_l1(plan, a, b) <= 1e-4
    assert np.abs(plan - ref).sum() < 1e-3


def test_sbcfm_fit_emits_no_solver_warning():
    import warnings

    import sctraj

    a = sctraj.datasets.simulate(n_cells=80, times=(0.0, 1.0, 2.0), n_dims=5, random_state=0)
    with warnings.catch_warnings():
        # the plans are solved in background threads: a POT warning there would raise inside the fit
        warnings.simplefilter("error")
        sctraj.tl.fit_flow(a, "time", method="sbcfm", use_rep="X_sim", sigma=0.05, n_steps=5, batch_size=16, width=8,
                           progress=False, trajectory_n_grid=0)


def test_pair_sampler_follows_plan():
    x = np.arange(6, dtype=float)[:, None]
    s = couplings.PairSampler(x, x[::-1].copy(), couplings.exact_plan, batch_size=64,
                              rng=np.random.default_rng(0), background=False)
    p = s.next()
    # exact OT on 1-d sorted points pairs i with the mirror index of the reversed copy
    assert np.array_equal(p.i1, 5 - p.i0)
    np.testing.assert_allclose(p.row_mass, 1.0)
    ind = couplings.PairSampler(x, x, None, batch_size=4000, rng=np.random.default_rng(0))
    q = ind.next()
    # independent coupling: about uniform over pairs
    counts = np.bincount(q.i0 * 6 + q.i1, minlength=36)
    assert counts.min() > 60


def test_pair_sampler_blocks_bound_plan_size():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(500, 2)), rng.normal(size=(700, 2))
    seen = []

    def plan_fn(a, b, wa, wb):
        seen.append((len(a), len(b)))
        return couplings.exact_plan(a, b)

    s = couplings.PairSampler(x0, x1, plan_fn, batch_size=50, block_size=100, refresh=2, rng=rng, background=True)
    for _ in range(5):
        p = s.next()
        assert p.i0.max() < 500 and p.i1.max() < 700
    s.close()
    assert seen and all(a <= 100 and b <= 100 for a, b in seen)


def test_pair_sampler_n_pairs_solves_no_unused_plan():
    # 5 steps of 50 pairs from plans serving 2 steps each need 3 plans; without n_pairs a 4th is prepared ahead
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    for n_pairs in (5 * 50, None):
        calls = []

        def plan_fn(a, b, wa, wb, calls=calls):
            calls.append(1)
            return couplings.exact_plan(a, b)

        s = couplings.PairSampler(x0, x1, plan_fn, batch_size=50, block_size=100, refresh=2,
                                  rng=np.random.default_rng(1), n_pairs=n_pairs)
        first = [s.next() for _ in range(5)]
        prepared_ahead = s._future is not None
        s.close()
        if n_pairs is None:
            assert prepared_ahead  # the next plan is always prepared ahead
        else:
            assert not prepared_ahead and len(calls) == 3
    # the pairs do not depend on n_pairs, and drawing past n_pairs still works (a plan is solved on demand)
    s2 = couplings.PairSampler(x0, x1, couplings.exact_plan, batch_size=50, block_size=100, refresh=2,
                               rng=np.random.default_rng(1), n_pairs=5 * 50)
    again = [s2.next() for _ in range(5)]
    assert all(np.array_equal(p.i0, q.i0) and np.array_equal(p.i1, q.i1) for p, q in zip(first, again, strict=True))
    assert len(s2.next().i0) == 50
    s2.close()


def test_single_blas_thread_restores_the_setting():
    from threadpoolctl import threadpool_info

    def blas():
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

    before = blas()
    with couplings.single_blas_thread():
        with couplings.single_blas_thread():  # nested / concurrent users share one limit
            assert all(n == 1 for n in blas())
        assert all(n == 1 for n in blas())
    assert blas() == before


@pytest.mark.parametrize("path", [paths.StraightPath(0.3), paths.BrownianBridgePath(0.5)])
def test_paths_hit_endpoints_and_velocity_is_derivative(path):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, generator=g, dtype=torch.float64)
    if isinstance(path, paths.BrownianBridgePath):
        for s_end, x_end in ((0.0, x0), (1.0, x1)):
            xt, _ = path.sample(x0, x1, torch.full((8,), s_end, dtype=torch.float64), eps)
            torch.testing.assert_close(xt, x_end)
    else:
        xt, _ = path.sample(x0, x1, torch.zeros(8, dtype=torch.float64))
        torch.testing.assert_close(xt, x0)
        xt, _ = path.sample(x0, x1, torch.ones(8, dtype=torch.float64))
        torch.testing.assert_close(xt, x1)
    s = torch.rand(8, generator=g, dtype=torch.float64) * 0.8 + 0.1
    h = 1e-6
    xa, _ = path.sample(x0, x1, s - h, eps)
    xb, _ = path.sample(x0, x1, s + h, eps)
    _, u = path.sample(x0, x1, s, eps)
    torch.testing.assert_close(u, (xb - xa) / (2 * h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_solver_exponential_decay(solver):
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    xs, lw = solvers.integrate(lambda x, t: -x, x0, t, n_steps=1000, solver=solver)
    assert lw is None
    np.testing.assert_allclose(xs[-1].numpy(), x0.numpy() * np.exp(-1), rtol=1e-3)
    np.testing.assert_allclose(xs[1].numpy(), x0.numpy() * np.exp(-0.5), rtol=1e-3)
    # backwards in time
    xb, _ = solvers.integrate(lambda x, t: -x, xs[-1], t.flip(0), n_steps=1000, solver=solver)
    np.testing.assert_allclose(xb[-1].numpy(), x0.numpy(), rtol=1e-3)


def test_mass_ode_constant_growth():
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    _, lw = solvers.integrate(lambda x, t: torch.zeros_like(x), x0, t, growth=lambda x, t: torch.full(
        (x.shape[0],), 0.3, dtype=x.dtype), n_steps=10)
    np.testing.assert_allclose(np.exp(lw[-1].numpy()), np.exp(0.6), rtol=1e-9)


def test_solver_rejects_unknown():
    with pytest.raises(ValueError, match="solver must be one of"):
        solvers.integrate(lambda x, t: x, torch.zeros(1, 1), torch.tensor([0.0, 1.0]), solver="heun3")


def test_fixed_step_mass_heun_is_second_order_against_closed_form():
    """dx/dt = -x, d log w/dt = x_0 + t: x(T) = x0 e^-T, log w(T) = x0_0 (1 - e^-T) + t0 T + T^2 / 2, with rows on
    different intervals (start time, step) in one batch."""
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.2]], dtype=torch.float64)
    t0 = torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64)
    span = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)

    def field(x, t):
        return -x, x[:, 0] + t

    T = span[:, None]
    x_true = x0 * torch.exp(-T)
    lw_true = x0[:, 0] * (1 - torch.exp(-span)) + t0 * span + span**2 / 2
    err = {}
    for scheme in ("euler", "heun"):
        for n in (8, 16):
            x, lw = solvers.fixed_step_mass(field, x0, t0, span / n, n, scheme=scheme)
            err[scheme, n] = max(float((x - x_true).abs().max()), float((lw - lw_true).abs().max()))
    assert err["heun", 8] < 0.02 < 0.2 < err["euler", 8]
    assert 3.0 < err["heun", 8] / err["heun", 16] < 5.5  # second order: half the step, a quarter of the error
    assert 1.5 < err["euler", 8] / err["euler", 16] < 2.5  # first order
    with pytest.raises(ValueError, match="scheme"):
        solvers.fixed_step_mass(field, x0, t0, span, 1, scheme="rk4")


def test_trainer_fits_constant_field_and_detects_nan():
    torch.manual_seed(0)
    net = VectorField(2, width=16, depth=2)
    target = torch.tensor([[1.0, -2.0]])
    x = torch.randn(64, 2)

    def loss_fn(step):
        return {"loss": ((net(x, torch.rand(64)) - target) ** 2).mean()}

    hist = train(net.parameters(), loss_fn, 300, lr=1e-2, progress=False)
    assert len(hist["loss"]) == 300 and hist["loss"][-1] < 0.01 * hist["loss"][0]

    def bad(step):
        return {"loss": net(x, torch.rand(64)).sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="learning rate"):
        train(net.parameters(), bad, 5, progress=False)


def test_trainer_cosine_schedule_halves_the_distance_travelled():
    # With a constant gradient every Adam step moves a parameter by about the learning rate, so the distance
    # travelled is the sum of the learning rates: n * lr when constant, n * lr * (1 + 0.01) / 2 with the cosine decay
    # from lr to lr / 100.
    n, lr = 400, 1e-2
    moved = {}
    for sched in ("constant", "cosine"):
        p = torch.nn.Parameter(torch.zeros(()))
        train([p], lambda step, p=p: {"loss": p * 1.0}, n, lr=lr, weight_decay=0.0, progress=False, lr_schedule=sched)
        moved[sched] = -float(p)
    assert moved["constant"] == pytest.approx(n * lr, rel=0.02)
    assert moved["cosine"] == pytest.approx(n * lr * 1.01 / 2, rel=0.02)
    with pytest.raises(ValueError, match="lr_schedule"):
        train([torch.nn.Parameter(torch.zeros(()))], lambda step: {}, 1, progress=False, lr_schedule="step")
