"""Neural diffusion processes (Dutordoir et al. 2022) on CPU: a diffusion model over functions,
trained on Gaussian-process draws and on step functions, conditioned on observed points by
RePaint.

    python examples/neural_diffusion_process.py            # two trainings, ~10 minutes each (more on a busy machine)
    python examples/neural_diffusion_process.py --only gp  # or --only step

Training (NET, TRAIN, POINTS, STEPS below): every step a fresh batch of 64 functions at 24 to 64
random inputs; eps-MSE at log-SNR-uniform times; Adam with warm-up, cosine decay and an EMA of
the weights. Conditioning: RePaint (SAMPLER: 40 steps on a quadratic grid, 10 passes per step;
STEP_SAMPLER for the step functions: each observation entered 10 times, 3 passes per step).

GP: draws of an RBF Gaussian process (lengthscale 0.5, variance 1, noise variance 0.01) on
[-2, 2]. Given 3 observed points, conditional samples at 40 test inputs are compared with the
exact GP posterior (mean and standard deviation), and with RePaint run on the exact GP score
(the conditioning method's own error, with the same settings), against the stated tolerance
(DELTA, Z below: a systematic error of a quarter of the posterior sd plus 4 Monte Carlo
standard errors). A run of the defaults (2500 steps, 615 s on one thread of two busy CPU cores;
400 samples from each score in 169 s) gave, in posterior sd, max over the 40 test inputs (rms
in brackets): |mean - exact| 0.229 (0.121) and |sd / exact - 1| 0.179 (0.100) for the NDP, 0.261
(0.130) and 0.142 (0.068) for RePaint on the exact score (Monte Carlo standard errors <= 0.059
and 0.035); both within the tolerance at all 40 inputs. In absolute terms (prior sd 1) the
NDP's largest mean error is 0.130 (0.207 for the exact score).

Step functions: f(x) = 0 for x < a, 1 otherwise, a ~ U[-1, 1], on [-1, 1]. Given f = 0 at -0.8
and -0.3 and f = 1 at 0.2 and 0.7, the posterior puts the jump a uniformly in (-0.3, 0.2]: a
non-Gaussian posterior that no GP can represent. Reported: the share of conditional samples at
41 inputs that put the jump between the observations (:func:`jump_between`: every target at or
left of -0.3 below 1/2, at or right of 0.2 above; exact posterior draws score 1, prior draws
0.25, tests/test_ndp.py), and the least-squares jump location (posterior on this grid: uniform
on -0.25, ..., 0.2, mean -0.025, sd 0.144). Plain RePaint (SAMPLER) is the bottleneck here, not
the network: with the exact step-function score it reaches only 0.46 (1 pass per step), 0.71
(10 passes), 0.80 (20), 0.89 (50), and a longer jump back (RePaint's jump length 5 or 10, tried
at the same cost on 200 samples, by the earlier measure that skipped the targets at the
observed inputs) did not help (0.71, 0.69 against 0.70): it moves the targets with the conditional given one
noisy copy of each observation, which at the noise levels where the jump is placed is far
broader than the posterior, and later passes cannot move a jump that many targets agree on.
Entering each observation 10 times (STEP_SAMPLER, see ``conditional_sample``) gives the
exact score 0.990 without resampling and 1.000 with 3 passes (jump -0.016 +- 0.146). A run of
the defaults (2500 steps in 1238 s on one thread of two CPU cores shared with other jobs, load
average ~6; the same recipe took 431-542 s on a quieter machine; 400 samples in 108 s) gave
0.958 +- 0.010 (standard error; the old sampler: 0.728 with the same network), above the stated
STEP_SHARE = 0.9 by 4 standard errors. Left to the network: its jumps are too concentrated in
the middle of the interval (least-squares location -0.021 +- 0.096 against the posterior's
-0.025 +- 0.144, where the exact score with the same sampler gives -0.016 +- 0.146), and 53% of
its samples cross 1/2 more than once (inside (-0.3, 0.2) for those that pass; the exact
score: none). With 20 copies
the share rises to 0.978 but the jumps concentrate more (sd 0.082); with 5 copies and 5 passes
it is 0.940.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.ndp import (RBF, BiDimensionalAttentionNet, conditional_sample, gp_functions, gp_posterior, gp_score,
                          ndp_score, step_functions, train_ndp)
from sdesolve.fileio import atomic_write
from sdesolve.scores import labels
from sdesolve.train.losses import EpsPrediction, LikelihoodWeighted

KERNEL = RBF(lengthscale=0.5, variance=1.0, noise=1e-2)
GP_CONTEXT = (torch.tensor([[-1.0], [0.2], [1.1]]), torch.tensor([0.8, -0.5, 1.0]))
STEP_CONTEXT = (torch.tensor([[-0.8], [-0.3], [0.2], [0.7]]), torch.tensor([0.0, 0.0, 1.0, 1.0]))


#: the network (Dutordoir et al. 2022, Sec. 4.1; the paper's is wider and deeper, trained for hours on a GPU)
NET = dict(hidden=32, blocks=3, heads=4)
#: training: Adam, linear warm-up then cosine decay, EMA of the weights, eps-MSE at log-SNR-uniform times
#: (half the draws at sigma < 0.7, where the functions' fine structure is learned); every step a
#: fresh batch of functions at a number of inputs drawn from POINTS (the network sees sets of any
#: size; the conditionals below use 43 or 45 points)
TRAIN = dict(batch=64, lr=2e-3, warmup=100, ema=0.995)
POINTS = (24, 64)
STEPS = 2500
#: RePaint (one-step jumps back; quadratic grid, fine near t = 0 where the known values pin the rest)
SAMPLER = dict(steps=40, resample=10, schedule=sds.schedules.quadratic)
#: step functions: every observation entered COPIES times (noise-free observations of a function:
#: the posterior is unchanged, and replacement then follows the conditional score given the clean
#: values; see conditional_sample), fewer passes per step
STEP_SAMPLER = dict(steps=40, resample=3, copies=10, schedule=sds.schedules.quadratic)

#: The stated tolerance of the GP conditionals, per test input, in units of the exact posterior
#: standard deviation sd and of the estimator's Monte Carlo standard error se:
#:     |mean - exact mean| <= DELTA sd + Z se_mean,   |sd_samples / sd - 1| <= DELTA + Z se_sd,
#: se_mean = sd_samples / sqrt(n), se_sd = 1 / sqrt(2 (n - 1)). DELTA is the systematic error
#: allowed (model and RePaint together): a Gaussian whose mean is off by DELTA sd, or whose sd is
#: off by a factor 1 +- DELTA, is within total variation ~0.1 of the exact one. Z = 4 bounds the
#: noise of the max over the 40 (correlated) targets: P(|N(0, 1)| > 4) = 6e-5 per target.
DELTA = 0.25
Z = 4.0
#: step functions: the share of conditional samples consistent with the observations (the
#: posterior's share is 1) must exceed STEP_SHARE by Z binomial standard errors.
STEP_SHARE = 0.9


def train(data, steps, label, log_every=500):
    """The recipe above on ``data(batch, generator, points)``; returns (net, seconds)."""
    torch.manual_seed(0)
    net = BiDimensionalAttentionNet(**NET)
    g = torch.Generator().manual_seed(0)
    p = sds.VPSDE()

    def batches(b, gen):
        return data(b, gen, int(torch.randint(POINTS[0], POINTS[1] + 1, (1,), generator=gen)))

    t0 = time.perf_counter()
    train_ndp(net, p, batches, steps, TRAIN["batch"], TRAIN["lr"], g, log_every=log_every, warmup=TRAIN["warmup"],
              ema=TRAIN["ema"], loss=LikelihoodWeighted(p, EpsPrediction(), labels.continuous, importance=True))
    seconds = time.perf_counter() - t0
    print(f"{label}: trained {steps} steps in {seconds:.0f} s ({torch.get_num_threads()} thread(s)); "
          f"{sum(p.numel() for p in net.parameters())} parameters")
    net.requires_grad_(False)
    return net, seconds


def train_gp(steps=STEPS, log_every=500):
    return train(lambda b, g, n: gp_functions(b, n, KERNEL, g), steps, "GP", log_every)


def train_step(steps=STEPS, log_every=500):
    return train(lambda b, g, n: step_functions(b, n, g)[:2], steps, "step", log_every)


def gp_conditionals(net, n, exact=True):
    """n conditional samples at 40 test inputs on [-2, 2] given GP_CONTEXT (RePaint, SAMPLER),
    from the network and (``exact``) from the exact GP score; and the exact posterior. Returns
    (x_target, samples, exact-score samples or None, posterior mean, posterior variance)."""
    p = sds.VPSDE()
    xc, yc = GP_CONTEXT
    xt = torch.linspace(-2, 2, 40)[:, None]
    mean, var = gp_posterior(KERNEL, xc, yc, xt)
    with torch.no_grad():
        y = conditional_sample(lambda X: ndp_score(net, p, X), p, xc, yc, xt, n, seed=0, **SAMPLER)
        y_exact = conditional_sample(gp_score(KERNEL, p), p, xc, yc, xt, n, seed=0, **SAMPLER) if exact else None
    return xt, y, y_exact, mean, var


def moment_errors(samples, mean, var):
    """Per target: (mean error / posterior sd, its Monte Carlo standard error in the same unit,
    sd / posterior sd - 1, its standard error 1 / sqrt(2 (n - 1)) (normal approximation))."""
    s = samples.double()
    n = s.shape[0]
    sd = var.sqrt()
    return ((s.mean(0) - mean) / sd, s.std(0) / sd / n**0.5, s.std(0) / sd - 1.0,
            torch.full_like(sd, 1.0 / (2.0 * (n - 1)) ** 0.5))


def within_tolerance(dm, se_m, ds, se_s):
    """Per target: is the conditional within the stated tolerance (DELTA, Z) of the posterior?"""
    return (dm.abs() <= DELTA + Z * se_m) & (ds.abs() <= DELTA + Z * se_s)


def jump_between(y, x, last_zero, first_one, level=0.5):
    """Per sample (rows of ``y``, values at inputs ``x`` (T,)): does it put the jump between the
    last observed 0 (at ``last_zero``) and the first observed 1 (at ``first_one``)? True when
    every value at x <= last_zero is below ``level`` and every value at x >= first_one above it.
    A step function f = 1[x >= a] passes iff last_zero < a <= first_one, exactly the support of
    the posterior of a; values within ``level`` of 0 and 1 (noise, rounding) do not change the
    verdict, a value on the wrong side of ``level`` (a point of the wrong level) does. Targets at
    the observed inputs themselves count (a function has one value there): inputs are compared
    with a tolerance of 1e-6 for float32 rounding (torch.linspace(-1, 1, 41) holds -0.29999998)."""
    x = x.to(torch.float64)
    left, right = x <= last_zero + 1e-6, x >= first_one - 1e-6
    return (y[:, left] < level).all(1) & (y[:, right] > level).all(1)


def fitted_jumps(y, x, level=0.5):
    """Per sample: the jump a of the step function 1[x >= a] closest to it in least squares, a
    among the inputs x (T,) (sorted) and x_T + 1 (no 1 at all); and the number of crossings of
    ``level`` along x (1 for a step function)."""
    b = (y > level).to(torch.float64)
    # squared error of 1[x >= x_k] = ones left of k set + zeros from k on not set
    cost0 = torch.cat([torch.zeros_like(b[:, :1]), b.cumsum(1)], 1)  # 1s left of k
    cost1 = torch.cat([(1 - b).flip(1).cumsum(1).flip(1), torch.zeros_like(b[:, :1])], 1)  # 0s from k on
    k = (cost0 + cost1).argmin(1)
    grid = torch.cat([x.to(torch.float64), x[-1:].to(torch.float64) + 1.0])
    return grid[k], (b[:, 1:] != b[:, :-1]).sum(1)


def step_conditionals(net, n):
    """n conditional samples at 41 inputs on [-1, 1] given STEP_CONTEXT (RePaint, STEP_SAMPLER).
    Returns (x_target, samples, jump between the observations (n,) bool (:func:`jump_between`),
    jump location per sample (:func:`fitted_jumps`), crossings of 1/2 per sample)."""
    p = sds.VPSDE()
    xc, yc = STEP_CONTEXT
    xt = torch.linspace(-1, 1, 41)[:, None]
    with torch.no_grad():
        y = conditional_sample(lambda X: ndp_score(net, p, X), p, xc, yc, xt, n, seed=0, **STEP_SAMPLER)
    ok = jump_between(y, xt[:, 0], -0.3, 0.2)
    jumps, crossings = fitted_jumps(y, xt[:, 0])
    return xt, y, ok, jumps, crossings


def gp_part(args, plt):
    """Train, sample, print, plot; returns the figures (a dict)."""
    net, train_s = train_gp(args.steps)
    xc, yc = GP_CONTEXT
    t0 = time.perf_counter()
    xt, y, y_exact, mean, var = gp_conditionals(net, args.n)
    sample_s = time.perf_counter() - t0
    print(f"GP: {args.n} conditional samples (and as many from the exact score) in {sample_s:.0f} s")
    figures = {"train_steps": args.steps, "train_s": train_s, "sample_s": sample_s, "n": args.n}
    sd = var.sqrt()
    print(f"  errors in posterior standard deviations, max over the 40 targets (rms), with the largest Monte Carlo "
          f"standard error")
    for name, s in (("NDP", y), ("exact score, same RePaint", y_exact)):
        dm, se_m, ds, se_s = moment_errors(s, mean, var)
        print(f"  {name:26s} |mean - exact| / sd {float(dm.abs().max()):.3f} ({float(dm.pow(2).mean().sqrt()):.3f}) "
              f"se <= {float(se_m.max()):.3f}; |sd / exact - 1| {float(ds.abs().max()):.3f} "
              f"({float(ds.pow(2).mean().sqrt()):.3f}) se {float(se_s[0]):.3f}")
        print(f"  {'':26s} |mean - exact| max {float((s.double().mean(0) - mean).abs().max()):.3f}, "
              f"|sd - exact| max {float((s.double().std(0) - sd).abs().max()):.3f} (absolute; prior sd 1)")
        ok = within_tolerance(dm, se_m, ds, se_s)
        print(f"  {'':26s} within the tolerance (DELTA {DELTA}, Z {Z}) at {int(ok.sum())} of {len(ok)} targets")
        figures["ndp" if name == "NDP" else "exact_score"] = {
            "mean_err_sd_max": float(dm.abs().max()), "mean_err_sd_rms": float(dm.pow(2).mean().sqrt()),
            "mean_se_sd_max": float(se_m.max()), "sd_ratio_err_max": float(ds.abs().max()),
            "sd_ratio_err_rms": float(ds.pow(2).mean().sqrt()), "sd_se": float(se_s[0]),
            "mean_err_abs_max": float((s.double().mean(0) - mean).abs().max()),
            "targets_within": int(ok.sum()), "targets": len(ok)}
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for a, s, title in ((ax[0], y, "NDP conditional samples"), (ax[1], y_exact, "RePaint with the exact GP score")):
        a.fill_between(xt[:, 0], mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.2, label="exact posterior +- 2 sd")
        a.plot(xt[:, 0], mean, color="C0", label="exact posterior mean")
        for k in range(8):
            a.plot(xt[:, 0], s[k], color="C1", lw=0.7, alpha=0.7)
        a.plot(xt[:, 0], s.mean(0), "--", color="C3", label="sample mean")
        a.plot(xt[:, 0], s.mean(0) - 2 * s.std(0), ":", color="C3")
        a.plot(xt[:, 0], s.mean(0) + 2 * s.std(0), ":", color="C3", label="sample mean +- 2 sd")
        a.scatter(xc[:, 0], yc, color="k", zorder=5, label="observed")
        a.set_title(title)
        a.set_xlabel("x")
    ax[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.gp_png, dpi=80)
    print(f"wrote {args.gp_png}")
    return figures


def step_part(args, plt):
    """Train, sample, print, plot; returns the figures (a dict)."""
    net, train_s = train_step(args.steps)
    xc, yc = STEP_CONTEXT
    t0 = time.perf_counter()
    xt, y, ok, jumps, crossings = step_conditionals(net, args.n)
    sample_s = time.perf_counter() - t0
    share = float(ok.double().mean())
    se = (share * (1 - share) / args.n) ** 0.5
    steps_share = float((crossings == 1).double().mean())
    print(f"step: share of conditional samples with the jump between the observed 0s and 1s (all targets "
          f"<= -0.3 below 1/2, all >= 0.2 above): {share:.3f} +- {se:.3f} (se) of {args.n}; sampled in "
          f"{sample_s:.0f} s")
    print(f"  fitted jump location: mean {float(jumps.mean()):.3f}, sd {float(jumps.std()):.3f} (posterior: the first "
          f"grid point >= a, a ~ U(-0.3, 0.2], uniform on -0.25, ..., 0.2: mean -0.025, sd 0.144); "
          f"step functions (one crossing of 1/2) {steps_share:.3f}")
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].axvspan(-0.3, 0.2, color="C0", alpha=0.15, label="posterior range of the jump")
    for k in range(12):
        ax[0].plot(xt[:, 0], y[k], color="C1", lw=0.8, alpha=0.8)
    ax[0].scatter(xc[:, 0], yc, color="k", zorder=5, label="observed")
    ax[0].set_title("NDP conditional samples (step functions)")
    ax[0].legend(fontsize=7)
    ax[1].hist(jumps.numpy(), bins=41, range=(-1.025, 1.025), color="C1")
    ax[1].axvspan(-0.3, 0.2, color="C0", alpha=0.15)
    grid = torch.linspace(-0.25, 0.2, 10)  # the exact posterior: uniform on these 10 grid points
    ax[1].step(torch.cat([grid - 0.025, grid[-1:] + 0.025]), torch.full((11,), args.n / 10), where="post", color="C0",
               label="exact posterior")
    ax[1].legend(fontsize=7)
    ax[1].set_title("jump location of the samples (least-squares step)")
    fig.tight_layout()
    fig.savefig(args.step_png, dpi=80)
    print(f"wrote {args.step_png}")
    return {"train_steps": args.steps, "train_s": train_s, "sample_s": sample_s, "n": args.n, "share": share,
            "share_se": se, "jump_mean": float(jumps.mean()), "jump_sd": float(jumps.std()),
            "step_functions": steps_share}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--n", type=int, default=400, help="conditional samples")
    ap.add_argument("--only", choices=["gp", "step"], default=None)
    ap.add_argument("--gp-png", default="examples/ndp_gp.png")
    ap.add_argument("--step-png", default="examples/ndp_step.png")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    Path(args.gp_png).parent.mkdir(parents=True, exist_ok=True)
    figures = {}
    if args.only in (None, "gp"):
        figures["gp"] = gp_part(args, plt)
    if args.only in (None, "step"):
        figures["step"] = step_part(args, plt)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(figures, indent=1)))


if __name__ == "__main__":
    main()
