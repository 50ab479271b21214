"""Guidance and replacement hooks on problems with exact answers.

Guidance: a 2-D mixture whose class k is component k, so the class-conditional score (component
k's score), the unconditional score and the time-dependent classifier p_t(k | x) (the posterior,
``GaussianMixture.posterior``) are all exact.

Replacement (inpainting): a correlated 2-D Gaussian, x_0 ~ N(0, [[1, rho], [rho, 1]]), with the
first coordinate known (= a); the exact conditional of the second is N(rho a, 1 - rho^2). On a
Gaussian every sampler here is a linear recursion in the unknown coordinate u and the value k
held in the known coordinate: one step is u' = A u + B k + sqrt(q) xi with A, B, q from the
process and the grid, and k is redrawn by the replacement (fresh noise, independent of u). So the
exact mean and variance of what the discrete sampler produces follow from a recursion on
(E u, Var u, E k, Var k, Cov(u, k)) (:class:`Moments`): the samplers are tested against those to
the Monte-Carlo noise floor, and their bias is the (deterministic) difference between those and
the exact conditional.
"""
import math

import pytest
import torch

import sdesolve as sds
from sdesolve.noise import Draw
from sdesolve.guidance import (AnnealedLangevinInpaint, ClassifierFreeGuidance, ClassifierGuidance,
                               Colorize, Inpaint, helmert_basis)

VP = sds.VPSDE()


def f64(v):
    return torch.tensor(float(v), dtype=torch.float64)


# --- guidance on a mixture ------------------------------------------------------------------------------
# three components far apart (distances 5, 6, 5.8; std 0.55): at t = 0 every sample belongs to one
MIX = sds.GaussianMixture([0.5, 0.3, 0.2], [[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [0.3, 0.3, 0.3])
Y = 2
NULL = -1  # the "no condition" label of the conditional model below


class ConditionalModel:
    """score(x, t, y): component y's score, or the mixture's for y = NULL; counts its calls."""

    def __init__(self, process):
        self.process, self.calls, self.batches = process, 0, []

    def __call__(self, x, t, y):
        self.calls += 1
        self.batches.append(x.shape[0])
        y = y.to(x.device)
        out = MIX.score_at(x, t, self.process)
        for k in range(MIX.K):
            out = torch.where((y == k)[:, None], MIX.score_at(x, t, self.process, component=k), out)
        return out


def conditional_score(process, **kw):
    return sds.Score(ConditionalModel(process), process, "score", y=torch.tensor(NULL), **kw)


def exact_classifier(process):
    return lambda x, t: torch.log(MIX.posterior(x, t, process))


def proportions(x):
    """Fraction of samples in each component (by the data-space posterior's argmax)."""
    return torch.bincount(MIX.posterior(x).argmax(1), minlength=MIX.K).double() / x.shape[0]


SOLVERS = [(sds.DPMSolverPP(2), 30), (sds.EulerMaruyama(), 200), (sds.UniPC(2), 20)]


@pytest.mark.parametrize("solver,steps", SOLVERS, ids=[type(s).__name__ for s, _ in SOLVERS])
def test_cfg_at_scale_one_is_conditional_sampling(solver, steps):
    score = conditional_score(VP)
    cfg = ClassifierFreeGuidance(score, cond=Y, uncond=NULL, scale=1.0)
    run = lambda s: sds.sample(VP, s, solver, shape=(64, 2), steps=steps, seed=3, dtype=torch.float64)
    guided = run(cfg)
    assert torch.equal(guided.y, run(MIX.score(VP, component=Y)).y)
    model = cfg.inner.fn
    assert model.calls == guided.stats.nfe  # one model call per evaluation ...
    assert set(model.batches) == {128}      # ... on the batch concatenated with itself
    unguided = run(ClassifierFreeGuidance(score, cond=Y, uncond=NULL, scale=0.0)).y
    assert torch.allclose(unguided, run(MIX.score(VP)).y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_cfg_is_classifier_guidance_with_the_implicit_classifier(scale):
    """s_u + w (s_c - s_u) = grad log p_t + w grad log p_t(y | x): the same samples."""
    cfg = ClassifierFreeGuidance(conditional_score(VP), cond=Y, uncond=NULL, scale=scale)
    cg = ClassifierGuidance(MIX.score(VP), exact_classifier(VP), Y, scale)
    x = 3.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(VP.t_min, VP.T, 256, dtype=torch.float64)
    a, b = cfg(x, t), cg(x, t)
    assert float((a - b).abs().max()) < 1e-9 * float(b.abs().max())
    ya = sds.sample(VP, cfg, sds.DPMSolverPP(2), shape=(64, 2), steps=20, seed=1, dtype=torch.float64).y
    yb = sds.sample(VP, cg, sds.DPMSolverPP(2), shape=(64, 2), steps=20, seed=1, dtype=torch.float64).y
    assert float((ya - yb).abs().max()) < 1e-8


def test_classifier_guidance_follows_bayes_rule():
    """Component proportions of guided samples, n = 2000 each.

    The tilted target p(x) p(y | x)^g has proportions pi_k = int w_k N_k p(y | x)^g dx / Z. For
    separated components (R_k: where component k dominates), Z_y ~ w_y, and for k != y
    Z_k = w_k^{1-g} w_y^g int_{R_k} N_k^{1-g} N_y^g dx <= w_k^{1-g} w_y^g exp(-g (1 - g) |mu_k - mu_y|^2 / (2 v))
    for 0 < g < 1 (for g > 1, Z_k <= w_y P_y(R_k)): pi_y = 1 - O(exp(-c |mu_k - mu_y|^2)) for every
    g > 0, and pi = w at g = 0. Quadrature on a grid gives the exact values (TARGET below).

    Samplers: at g = 0 the unguided sampler draws w; at g = 1 the guided score is exactly component
    y's score at every t (grad log p_t + grad log p_t(y | x) = grad log p_t(x | y)), so every sample
    is in y. For g != 1 the guided scores are those of p_t p_t(y | x)^g, which are not the marginals
    of one diffusion: the sampler does not reach the target, and the reverse SDE and the
    probability-flow ODE (which share marginals for true scores) disagree. Measured pi_y (seed 0;
    ODE: DPM-Solver++(2M), 30 steps; SDE: Euler-Maruyama, 200 steps) against the target:
        g = 0     target 0.2       ODE 0.189  SDE 0.202
        g = 0.25  target 0.99866   ODE 0.357  SDE 0.438
        g = 0.5   target 0.99995   ODE 0.660  SDE 0.857
        g = 1, 2, 4               ODE 1.000  SDE 1.000
    Noise floor of a proportion: sqrt(p (1 - p) / n) <= 0.0112; bounds use 6 of it.
    """
    n, se = 2000, 0.0112
    clf = exact_classifier(VP)
    target = tilted_proportions(0.5)
    assert target[Y] > 0.9999
    ode, sde = {}, {}
    for g in (0.0, 0.5, 1.0, 2.0):
        s = ClassifierGuidance(MIX.score(VP), clf, Y, g)
        ode[g] = proportions(sds.sample(VP, s, sds.DPMSolverPP(2), shape=(n, 2), steps=30, seed=0,
                                        dtype=torch.float64).y)
        if g in (0.5, 1.0):
            sde[g] = proportions(sds.sample(VP, s, sds.EulerMaruyama(), shape=(n, 2), steps=200, seed=0,
                                            dtype=torch.float64).y)
    assert torch.allclose(ode[0.0], MIX.weights, atol=6 * se)
    for g in (1.0, 2.0):
        assert float(ode[g][Y]) >= 0.999
    assert float(sde[1.0][Y]) >= 0.999
    # between the prior weight and the tilted target, and not the same for the ODE and the SDE
    for got in (ode[0.5], sde[0.5]):
        assert MIX.weights[Y] + 6 * se < float(got[Y]) < target[Y] - 6 * se
    assert abs(float(ode[0.5][Y] - sde[0.5][Y])) > 6 * se * math.sqrt(2)


def tilted_proportions(g, h=0.02):
    """pi_k of p(x) p(y | x)^g (hard assignment to the dominating component) by quadrature."""
    u = torch.arange(-8.0, 8.0, h, dtype=torch.float64)
    v = torch.arange(-5.0, 9.0, h, dtype=torch.float64)
    x = torch.cartesian_prod(u, v)
    q = MIX.log_prob(x).exp() * MIX.posterior(x)[:, Y] ** g
    k = MIX.posterior(x).argmax(1)
    return (torch.bincount(k, weights=q, minlength=MIX.K) / q.sum()).tolist()


def test_classifier_guidance_is_differentiable_and_accepts_a_gradient():
    clf = exact_classifier(VP)
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    s = ClassifierGuidance(MIX.score(VP), clf, Y, 2.0)(x, t)
    (gx,) = torch.autograd.grad(s.sum(), x)  # second derivatives of log p(y | x) flow through
    assert torch.isfinite(gx).all() and gx.abs().max() > 0

    def grad(x, t, y):
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            return torch.autograd.grad(torch.log(MIX.posterior(xi, t, VP)).gather(1, y[:, None]).sum(), xi)[0]
    with torch.no_grad():
        a = ClassifierGuidance(MIX.score(VP), y=Y, scale=2.0, log_prob_grad=grad)(x, t)
        b = ClassifierGuidance(MIX.score(VP), clf, Y, 2.0)(x, t)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        c = ClassifierGuidance(MIX.score(VP), clf, Y, 2.0)(x.detach(), t)
    assert torch.allclose(c, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one of"):
        ClassifierGuidance(MIX.score(VP), clf, Y, 1.0, log_prob_grad=grad)
    with pytest.raises(ValueError, match="3 rows for a batch of 8"):
        ClassifierGuidance(MIX.score(VP), clf, torch.tensor([0, 1, 2]), 1.0)(x.detach(), t)


# --- replacement: the exact moments of the discrete samplers on a Gaussian ----------------------------------
RHO, A = 0.8, 1.0
SIGMA = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)
GAUSS = sds.GaussianMixture([1.0], [[0.0, 0.0]], SIGMA[None])
KNOWN = torch.tensor([A, 0.0], dtype=torch.float64)
MASK = torch.tensor([True, False])
N_MC = 4000


class Moments:
    """E u, Var u of the unknown coordinate, E k, Var k of the held known value and Cov(u, k)."""

    def __init__(self, var0):
        self.mu, self.vu, self.mk, self.vk, self.c = 0.0, var0, 0.0, var0, 0.0  # x_T from the prior

    def update(self, A, B, q):
        """u' = A u + B k + sqrt(q) xi (xi independent of everything)."""
        self.mu, self.vu, self.c = (A * self.mu + B * self.mk, A * A * self.vu + B * B * self.vk + 2 * A * B * self.c
                                    + q, A * self.c + B * self.vk)

    def replace(self, mean, var):
        """k <- a fresh draw, independent of u."""
        self.mk, self.vk, self.c = mean, var, 0.0


def precision(process, t):
    """(P_uu, P_uk) of C_t^{-1}, C_t = alpha^2 Sigma + sigma^2 I: s_u = -(P_uu u + P_uk k)."""
    a, s = process.marginal(f64(t))
    P = torch.linalg.inv(a**2 * SIGMA + s**2 * torch.eye(2, dtype=torch.float64))
    return float(P[1, 1]), float(P[1, 0])


def replacement_moments(process, grid, predictor, corrector_steps=0, snr=0.16):
    m = Moments(process.prior_std**2)
    for i in range(len(grid) - 1):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        Puu, Puk = precision(process, t0)
        # Langevin corrector with expected norms: x += e s + sqrt(2 e) z, e = 2 alpha_i snr^2 sigma_t^2
        e = 2 * float(process.langevin_alpha(f64(t0), f64(t1 - t0))) * snr**2 * float(process.sigma(f64(t0))) ** 2
        for _ in range(corrector_steps):
            m.update(1 - e * Puu, -e * Puk, 2 * e)
        if predictor == "em":  # u + h (f u - g^2 s_u) + g sqrt|h| z
            h, f, g2 = t1 - t0, float(process.f(f64(t0))), float(process.g2(f64(t0)))
            m.update(1 + h * f + h * g2 * Puu, h * g2 * Puk, g2 * abs(h))
        else:  # reverse diffusion: (2 - a) u + s2 s_u + sqrt(s2) z over the transition x_t0 = a x_t1 + ...
            a = math.exp(float(process.log_alpha(f64(t0)) - process.log_alpha(f64(t1))))
            s2 = float(process.sigma(f64(t0))) ** 2 - a * a * float(process.sigma(f64(t1))) ** 2
            m.update(2 - a - s2 * Puu, -s2 * Puk, s2)
        last = i == len(grid) - 2
        alpha, sigma = (float(c) for c in process.marginal(f64(t1)))
        m.replace(A if last else alpha * A, 0.0 if last else sigma**2)
    return m.mu, m.vu


def annealed_moments(process, grid, n_steps, step_lr):
    m = Moments(process.prior_std**2)
    s_end = float(process.sigma_edm(f64(grid[-1])))
    for i in range(len(grid) - 1):
        t1 = float(grid[i + 1])
        a = step_lr * float(process.sigma_edm(f64(t1))) ** 2 / s_end**2
        alpha, sigma = (float(c) for c in process.marginal(f64(t1)))
        Puu, Puk = precision(process, t1)
        for j in range(n_steps):
            m.update(1 - a * alpha**2 * Puu, -a * alpha**2 * Puk, 2 * a * alpha**2)
            if j == 0:  # the level's noisy copy of the known value, drawn once
                m.replace(alpha * A, sigma**2)
    # final denoising x + sigma^2 s(x) (then / alpha), with the last level's known value
    m.update((1 - sigma**2 * Puu) / alpha, -sigma**2 * Puk / alpha, 0.0)
    return m.mu, m.vu


def exact_conditional(process):
    """u at the end time t_min given x_0's known coordinate = A: N(alpha rho A, alpha^2 (1 - rho^2) + sigma^2)."""
    a, s = (float(c) for c in process.marginal(f64(process.t_min)))
    return a * RHO * A, a * a * (1 - RHO**2) + s * s


def check_moments(u, mean, var):
    """MC mean and variance against the exact ones, within 5 standard errors (mean: sqrt(var / n);
    variance: var sqrt(2 / (n - 1)) for a Gaussian, which u is: a linear function of normals)."""
    n = u.numel()
    assert abs(float(u.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(u.var()) - var) < 5 * var * math.sqrt(2 / (n - 1))


# Exact moments of each discrete sampler (500 steps on VP; 100 levels x 10 updates on VE) vs the
# exact conditional N(0.8, 0.36) (at t_min = 1e-3: 0.79996, 0.36007):
#   Euler-Maruyama + replacement          mean 0.5007  var 0.4962   (bias -0.299, +0.136)
#   reverse diffusion + replacement       mean 0.4970  var 0.5006   (bias -0.303, +0.141)
#   reverse diffusion + 1 Langevin step   mean 0.6514  var 0.4298   (bias -0.149, +0.070)
#   annealed Langevin (NCSN inpainting)   mean 0.7926  var 0.3688   (bias -0.007, +0.009)
# Why replacement is biased: its unknown coordinate follows grad_u log p_t(u | k_t) with k_t a
# fresh draw around alpha_t A, a pull towards c alpha_t A, c = alpha_t^2 rho, with precision
# 1 / (1 - c^2); the conditional process given x_0's known value needs the pull towards alpha_t rho A
# with precision 1 / (1 - alpha_t^2 rho^2). The information arrives too late (alpha_t^3 rho A instead of
# alpha_t rho A) and the chain, mixing ever slower as t -> 0, keeps the deficit. Correctors at each t
# (more Langevin steps) bring it towards the conditional; annealed Langevin, all corrector, nearly gets
# there, its remaining bias set by the step size at the smallest levels.
REPLACEMENT = [("EulerMaruyama", sds.EulerMaruyama(), "em", 0, (0.5007, 0.4962)),
               ("ReverseDiffusion", sds.ReverseDiffusion(), "rd", 0, (0.4970, 0.5006)),
               ("PC(ReverseDiffusion, Langevin)", sds.PredictorCorrector(
                   sds.ReverseDiffusion(), sds.Langevin(0.16, 1, expected_norms=True)), "rd", 1, (0.6514, 0.4298))]


@pytest.mark.parametrize("name,solver,predictor,corrector_steps,documented", REPLACEMENT,
                         ids=[r[0] for r in REPLACEMENT])
def test_replacement_inpainting_moments(name, solver, predictor, corrector_steps, documented):
    steps = 500
    x = sds.sample(VP, GAUSS.score(VP), Inpaint(solver, KNOWN, MASK), shape=(N_MC, 2), steps=steps, seed=1,
                   dtype=torch.float64).y
    assert torch.equal(x[:, 0], torch.full((N_MC,), A, dtype=torch.float64))  # kept exactly
    mean, var = replacement_moments(VP, sds.schedules.uniform(VP, steps), predictor, corrector_steps)
    assert (round(mean, 4), round(var, 4)) == documented
    check_moments(x[:, 1], mean, var)
    # the bias, against the exact conditional: the mean is pulled towards 0, the variance inflated
    exact_mean, exact_var = exact_conditional(VP)
    assert -0.31 < mean - exact_mean < -0.14 and 0.06 < var - exact_var < 0.15


def test_annealed_langevin_inpainting_moments():
    ve = sds.VESDE(sigma_min=0.01, sigma_max=5.0)
    levels, n_steps, step_lr = 100, 10, 5e-5
    x = sds.sample(ve, GAUSS.score(ve), AnnealedLangevinInpaint(KNOWN, MASK, n_steps, step_lr), shape=(N_MC, 2),
                   steps=levels, seed=1, dtype=torch.float64).y
    assert torch.equal(x[:, 0], torch.full((N_MC,), A, dtype=torch.float64))
    mean, var = annealed_moments(ve, sds.schedules.uniform(ve, levels), n_steps, step_lr)
    assert (round(mean, 4), round(var, 4)) == (0.7926, 0.3688)
    check_moments(x[:, 1], mean, var)
    exact_mean, exact_var = exact_conditional(ve)
    assert abs(mean - exact_mean) < 0.01 and abs(var - exact_var) < 0.01  # nearly unbiased
    u = x[:, 1]  # and the samples say so too, to their noise floor plus that bias
    assert abs(float(u.mean()) - exact_mean) < 0.01 + 5 * math.sqrt(exact_var / N_MC)


# --- hooks compose with every solver ------------------------------------------------------------------------
COMPOSE = [sds.DDIM(), sds.DPMSolverPP(3), sds.UniPC(2), sds.Heun(), sds.EulerMaruyama(), sds.Ancestral(),
           sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(0.1, 1))]


@pytest.mark.parametrize("solver", COMPOSE, ids=lambda s: type(s).__name__)
def test_hooks_pass_state_through(solver):
    """With nothing known the wrapper is the solver itself (state, noise, last step: identical);
    with everything known the result is the known values exactly."""
    score, shape = MIX.score(VP), (16, 2)
    run = lambda s: sds.sample(VP, score, s, shape=shape, steps=12, seed=4, dtype=torch.float64).y
    plain = run(solver)
    assert torch.equal(run(Inpaint(solver, KNOWN, torch.zeros(2, dtype=torch.bool))), plain)
    full = run(Inpaint(solver, torch.tensor([0.3, -0.2], dtype=torch.float64), torch.ones(2, dtype=torch.bool)))
    assert torch.equal(full, torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(16, 2))


def test_inpaint_per_sample_known_values_and_errors():
    known = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sds.sample(VP, MIX.score(VP), Inpaint(sds.DPMSolverPP(2), known, MASK), shape=(16, 2), steps=10, seed=0,
                   dtype=torch.float64).y
    assert torch.equal(x[:, 0], known[:, 0])
    with pytest.raises(ValueError, match="do not broadcast"):
        sds.sample(VP, MIX.score(VP), Inpaint(sds.DDIM(), known[:3], MASK), shape=(16, 2), steps=4, seed=0)
    with pytest.raises(TypeError, match="adaptive"):
        Inpaint(sds.Dopri5(1e-3, 1e-3), known, MASK)
    with pytest.raises(ValueError, match="boolean or 0/1"):
        Inpaint(sds.DDIM(), known, torch.tensor([0.5, 1.0]))


def test_replacement_noise_is_its_own_draw():
    """The replacement noise is draw Draw.REPLACEMENT of the step, not one the solver uses: the
    unknown coordinate after one EM step does not depend on what the known one is replaced with,
    and the noise put into the known coordinate is exactly that draw."""
    from sdesolve.noise import Noise, streams
    eq = VP.reverse(GAUSS.score(VP))
    hook = Inpaint(sds.EulerMaruyama(), KNOWN, MASK)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0, t1 = torch.full((8,), 0.6, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    noise = Noise(streams(7, 8)).at(3)
    state = hook.init(eq, t0, x)
    out = hook.step(eq, t0, t1, x, state, noise).y
    plain = sds.EulerMaruyama().step(eq, t0, t1, x, None, noise).y
    assert torch.equal(out[:, 1], plain[:, 1])
    a, s = VP.marginal(t1)
    z = noise.normal(x, Draw.REPLACEMENT)
    assert torch.allclose(out[:, 0], a * A + s * z[:, 0], rtol=0, atol=1e-15)


def test_colorize_keeps_the_gray_image():
    """Colour images (B, 3, 2, 2) from a Gaussian with correlated channels; the channel mean of the
    result equals the given gray image (to rounding of the rotation), the colours vary."""
    g = torch.Generator().manual_seed(0)
    D = 12
    L = 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = L @ L.T + torch.kron(torch.eye(4, dtype=torch.float64), 0.5 * torch.ones(3, 3, dtype=torch.float64)) \
        + 0.05 * torch.eye(D, dtype=torch.float64)
    gauss = sds.GaussianMixture([1.0], torch.zeros(1, D, dtype=torch.float64), cov[None])
    process = sds.VPSDE()

    class Images:  # the Gaussian's score on images (B, 3, 2, 2), flattened channel-first
        def __call__(self, x, t):
            return gauss.score_at(x.reshape(x.shape[0], -1), t, process).reshape(x.shape)
    gray = torch.randn(8, 1, 2, 2, generator=g, dtype=torch.float64)
    x = sds.sample(process, sds.Score(Images()), Colorize(sds.DPMSolverPP(2), gray), shape=(8, 3, 2, 2), steps=20,
                   seed=0, dtype=torch.float64).y
    assert float((Colorize.to_gray(x) - gray).abs().max()) < 1e-12
    assert float(x.std(1).mean()) > 0.05
    H = helmert_basis(3)
    assert torch.allclose(H.T @ H, torch.eye(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(H[:, 0], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
