"""Stochastic samplers at 20-100 model evaluations against the 1000-step Euler-Maruyama reference
on the digits model: which sampler comes within 10% of the reference's Fréchet distance, and at
how few evaluations.

    python benchmarks/sde_reference.py [--checkpoint /work/runs/digits] [--n 1000] [--only TEXT] \
        [--cache DIR] [--out benchmarks/results/sde_reference]

The committed results: ``--n 1000`` (every default row, ``sde_reference.md``) and ``--n 2000`` with
``--only`` the rows closest to the margin at n = 1000 (``sde_reference_n2000.md``; its first 1000
samples are those of the n = 1000 run, reused from the cache); each file records its command.

Rows: Euler-Maruyama on the reverse SDE with 1000 uniform steps (the reference); DPM-Solver++(2M)
SDE on its default grid at 20-50 NFE; SA-Solver (Xue et al. 2023) with the authors' tau band or
tau = 1 everywhere, (predictor, corrector) orders (2, 2) and (3, 3) on its default time-uniform
(rho 2) grid at 20/30/40 NFE, and (3, 3) on the log-SNR and Karras (rho 7) grids at 20 NFE
(``--full``: every order, grid and NFE, and DPM-Solver++(2M) SDE at 70 and 100); Restart
sampling (Xu et al. 2023) with EDM Heun inside as the paper runs it on CIFAR-10 VP (Karras main
grid, one interval rho in [0.06, 0.30], K = 2 restarts of 2 Heun steps: the paper's
``params_cifar10_vp.txt`` line "18 {0: [3, 2, 0.06, 0.30]}", 3 times being 2 steps) and with
DPM-Solver++(2M) inside.

Every row samples the same n samples: x_T[i] comes from stream (seed, i), and the step noise of a
stochastic row is the increment, over each of its steps, of the Brownian path that drives the
reference's sample i (:class:`SharedBrownianPath`; ``--independent-noise``: each row's own draws
from stream (seed, i)). The coupling leaves every row's law unchanged and makes a row's samples
close to the reference's, so that paired differences are far tighter than with independent
noise. Quality: Fréchet distance in the digits classifier's features to the held-out split
(``sdesolve.bench.problems.checkpoint_problem``). Intervals: one set of bootstrap resamples of
the sample indices shared by every row (paired), 95% percentile intervals re-centred on the
estimate (``sdesolve.bench.paired``). The criterion FD(row) <= 1.1 FD(reference) is read from
the paired replicates of FD(row) - 1.1 FD(reference): "yes" when the whole interval lies below 0,
"no" when it lies above, "not resolved" otherwise. The FD of n samples carries a bias that
shrinks with n, shared by every row (n real training images score 5.6 at n = 1000, 5.2 for all
1438; the held-out split has 359 images), and FD varies by more than the margin between sample
sets (the reference scores 5.64 on samples 0-999 and 7.81 on samples 1000-1999): the 10% margin is
a statement at this n, read from paired differences only.

Each row's features are kept in ``--cache`` (one .pt per row), so a run can be split (``--only``)
or resumed; the report is written from every row found there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.bench import problems
from sdesolve.bench.paired import Bootstrap, compare, percentile_interval
from sdesolve.bench.runner import environment, initial_noise
from sdesolve.noise import Noise

S = sds.schedules
GRIDS = {"default": None, "time_uniform2": S.time_uniform(2.0), "logsnr": S.logsnr, "karras7": S.karras(7.0)}
MARGIN = 1.1
NOISE_NOTE = ("increments of the reference's Brownian path over each step (Brownian bridges between the "
              "reference's times), so that every stochastic row is coupled to the reference (SharedBrownianPath)")
REFERENCE = ("EulerMaruyama (reference)", sds.EulerMaruyama(), 1000)


def reference_path(base, reference_grid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """W at the reference's times, (len(reference_grid), *like.shape) float64: W(u_0) = 0 and
    W(u_{j+1}) = W(u_j) + sqrt(u_{j+1} - u_j) (draw 0 of step j of ``base``), u = T - t."""
    u = (reference_grid[0] - reference_grid).abs().to(torch.float64)
    w = torch.zeros((len(u),) + tuple(like.shape), dtype=torch.float64)
    for k in range(len(u) - 1):
        w[k + 1] = w[k] + math.sqrt(float(u[k + 1] - u[k])) * base.at(k).normal(like, 0).to(torch.float64)
    return w


class SharedBrownianPath:
    """Step noise of a fixed grid taken from one Brownian path per sample, the path whose increments
    over the reference's grid are the reference's own noise: rows on other grids then see the
    same Brownian motion as the reference (a coupling), not independent draws.

    In u = T - t the path is W(u_0 = 0) = 0 and W(u_{j+1}) = W(u_j) + sqrt(u_{j+1} - u_j) z_j on
    the reference grid, z_j being draw 0 of step j of the sample's stream (what Euler-Maruyama on
    that grid draws by default); a time between two reference times takes the Brownian bridge
    between them (Karatzas & Shreve 1991, 5.6.B), sequentially for several times in one interval,
    with normals from draws ``BRIDGE + m`` of that reference step. Step k of ``grid`` then draws
    z_k = (W(u_{k+1}) - W(u_k)) / sqrt(u_{k+1} - u_k) as its draw 0: independent standard normals
    (increments of a Brownian motion over disjoint intervals), independent of x_T, so that every
    row's samples have the law they have with the default noise; only the coupling between rows
    changes. Other draws (and the prior) come from the sample's stream as usual. ``w``: the path at
    the reference's times (:func:`reference_path`), when several grids share it.
    """

    BRIDGE = 0x7E000000

    def __init__(self, base, reference_grid: torch.Tensor, grid: torch.Tensor, like: torch.Tensor, w=None):
        rg, g = reference_grid.to(torch.float64), grid.to(torch.float64)
        if abs(float(rg[0] - g[0])) > 1e-12 or abs(float(rg[-1] - g[-1])) > 1e-12:
            raise ValueError(f"the grid {float(g[0])}..{float(g[-1])} must span the reference grid "
                             f"{float(rg[0])}..{float(rg[-1])}")
        self.base = base
        uf, uc = (rg[0] - rg).abs(), (g[0] - g).abs()
        j = torch.searchsorted(uf, uc, right=True) - 1          # reference interval of each grid time
        on = (uc - uf[j]).abs() <= 1e-12                         # a reference time itself
        at_ref = reference_path(base, rg, like) if w is None else w
        path, left = [], {}  # left[j]: the last known (u, W) in reference interval j and bridge draws used
        for i in range(len(uc)):
            jj, u = int(j[i]), float(uc[i])
            if bool(on[i]):
                path.append(at_ref[jj])
                continue
            ul, wl, m = left.get(jj, (float(uf[jj]), at_ref[jj], 0))
            ur, wr = float(uf[jj + 1]), at_ref[jj + 1]
            mean = wl + (u - ul) / (ur - ul) * (wr - wl)
            std = math.sqrt(max((u - ul) * (ur - u) / (ur - ul), 0.0))
            ws = mean + std * base.at(jj).normal(like, self.BRIDGE + m).to(torch.float64)
            path.append(ws)
            left[jj] = (u, ws, m + 1)
        # a step that is one reference step takes the reference's normal itself (no rounding)
        self.z = [base.at(int(j[k])).normal(like, 0) if (bool(on[k]) and bool(on[k + 1]) and int(j[k + 1]) == int(j[k]) + 1)
                  else (path[k + 1] - path[k]) / math.sqrt(float(uc[k + 1] - uc[k])) for k in range(len(uc) - 1)]
        self.stream, self.step = base.stream, base.step

    def __len__(self):
        return len(self.base)

    def at(self, k):
        return _PathStep(self, int(k))


class _PathStep:
    def __init__(self, path, k):
        self.path, self.k = path, k

    def __len__(self):
        return len(self.path)

    def normal(self, like, draw: int = 0):
        if draw == 0:
            return self.path.z[self.k].to(like.dtype)
        return self.path.base.at(self.k).normal(like, draw)


def rows(full: bool = False):
    """(key, label, solver, grid name, steps), in the order they are run (the likeliest first).
    The default set fits a shared 2-core machine (about 1800 model evaluations per sample);
    ``full`` adds SA-Solver on the log-SNR and Karras grids at 30 and 40 NFE, (2, 2) on them, and
    DPM-Solver++(2M) SDE at 70 and 100 NFE."""
    def dpm(nfe):
        return (f"dpmsde-{nfe}", "DPMSolverPP(2M) SDE", sds.DPMSolverPP(2, sde=True), "default", nfe)

    def sa(po, tau_name, g, nfe):
        tau = {"band": None, "1": 1.0}[tau_name]
        return (f"sa{po}{po}-tau{tau_name}-{g}-{nfe}", f"SASolver({po},{po}) tau={tau_name}",
                sds.SASolver(po, po, tau=tau), g, nfe)
    out = [("ref", REFERENCE[0], REFERENCE[1], "default", REFERENCE[2])]
    out += [dpm(nfe) for nfe in (20, 30, 40, 50)]
    out += [sa(3, tau, "time_uniform2", nfe) for tau in ("band", "1") for nfe in (20, 30, 40)]
    # Restart: the paper's CIFAR-10 VP setting is 18 EDM-Heun steps on Karras' grid and one interval
    # [0.06, 0.30] with K = 2 restarts of 2 Heun steps (43 NFE); smaller budgets take fewer steps.
    iv = (0.06, 0.30)
    for main, k, m in ((9, 1, 2), (12, 2, 2), (18, 2, 2)):
        out.append((f"restart-heun-{main}-{k}x{m}", f"Restart(EDMHeun) {main} st, K={k}x{m} on [0.06,0.30]",
                    sds.Restart(sds.EDMHeun(), intervals=(iv + (k,),), restart_steps=m), "default", main))
    for main, k, m in ((14, 2, 3), (22, 2, 4), (30, 2, 5)):
        out.append((f"restart-dpmpp-{main}-{k}x{m}", f"Restart(DPMSolverPP(2)) {main} st, K={k}x{m} on [0.06,0.30]",
                    sds.Restart(sds.DPMSolverPP(2), intervals=(iv + (k,),), restart_steps=m), "default", main))
    out += [sa(2, tau, "time_uniform2", nfe) for tau in ("band", "1") for nfe in (20, 30, 40)]
    out += [sa(3, tau, g, 20) for tau in ("band", "1") for g in ("logsnr", "karras7")]
    if full:
        out += [sa(po, tau, g, nfe) for tau in ("band", "1") for po in (3, 2) for g in ("logsnr", "karras7")
                for nfe in (20, 30, 40) if (po, nfe) != (3, 20)]
        out += [dpm(70), dpm(100)]
    return out


_PATHS = {}  # the reference's Brownian path of the current batch, shared by the rows


def run_row(prob, solver, grid, steps, n, seed, batch, coupled=True, start=0):
    """(features of samples start..n-1, stats.nfe, seconds) of one row, in batches, with x_T and
    noise from (seed, i); ``coupled``: a stochastic row's step noise from the reference's Brownian
    path (:class:`SharedBrownianPath`)."""
    shape = tuple(prob.sample_shape)
    p = prob.process
    feats, nfe, t0 = [], 0, time.time()
    ref_grid = REFERENCE[1].default_schedule(p, REFERENCE[2])
    times = (grid or solver.default_schedule)(p, steps)
    with torch.no_grad():
        for lo in range(start, n, batch):
            b = min(batch, n - lo)
            x_T = initial_noise(p, (b,) + shape, seed, lo)
            base = Noise.from_seed(seed, b, offset=lo)
            if coupled and solver.stochastic:
                if (seed, lo, b) not in _PATHS:
                    _PATHS.clear()
                    _PATHS[(seed, lo, b)] = reference_path(base, ref_grid, x_T)
                noise = SharedBrownianPath(base, ref_grid, times, x_T, w=_PATHS[(seed, lo, b)])
            else:
                noise = base
            eq = p.reverse(prob.score) if solver.stochastic else p.probability_flow(prob.score)
            sol = sds.solve(eq, x_T, None, None, solver, schedule=times, noise=noise, check_finite=False)
            feats.append(prob.quality.prepare(prob.to_data(sol.y.float())))
            nfe = int(sol.stats.nfe)
    return torch.cat(feats), nfe, time.time() - t0


def fmt(v, lo, hi):
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def report(prob, table, n, seed, replicates, out: Path, command: str, env: dict, coupled: bool = True):
    """Paired bootstrap of every cached row against the reference; writes out.md and out.json."""
    if "ref" not in table:
        raise SystemExit("no reference row in the cache yet")
    metric = next(m for m in prob.quality.metrics if m.name == prob.quality.primary)
    boot = Bootstrap(n, replicates, seed=0)
    fd = {k: boot.evaluate(metric, r["features"]) for k, r in table.items()}
    ref = fd["ref"]
    floor = prob.quality.floor(n)
    res_rows = []
    for key, r in table.items():
        v = fd[key]
        lo, hi = percentile_interval(v[1:], boot.level, float(v[0]))
        row = {"key": key, "sampler": r["label"], "solver": r["solver"], "grid": r["grid"], "steps": r["steps"],
               "nfe": r["nfe"], "fd": float(v[0]), "fd_interval": [lo, hi], "seconds": r["seconds"]}
        if key != "ref":
            d = compare(v, ref, boot.level)
            m = compare(v, MARGIN * ref, boot.level)
            row["fd_minus_ref"] = [d["diff"], d["lo"], d["hi"]]
            row["fd_minus_margin_ref"] = [m["diff"], m["lo"], m["hi"]]
            row["within_10pct"] = {-1: "yes", 1: "no", 0: "not resolved"}[m["sign"]]
        res_rows.append(row)
    body = [r for r in res_rows if r["key"] != "ref"]
    body.sort(key=lambda r: (r["sampler"].split(" ")[0], r["sampler"], r["grid"], r["nfe"]))
    ref_row = next(r for r in res_rows if r["key"] == "ref")
    yes = sorted([r for r in body if r["within_10pct"] == "yes"], key=lambda r: (r["nfe"], r["fd"]))
    dpm = sorted([r for r in body if r["key"].startswith("dpmsde") and r["within_10pct"] == "yes"], key=lambda r: r["nfe"])
    lines = [
        "# Stochastic samplers at 20-100 NFE against the 1000-step Euler-Maruyama reference (digits model)", "",
        f"- command: `{command}`",
        f"- checkpoint: {prob.info.get('path')} ({prob.info.get('model')}, {prob.info.get('parameters')} parameters, "
        f"{prob.info.get('process')})",
        f"- {n} samples, seed {seed}: x_T and step noise of sample i from stream ({seed}, i), shared by every row",
        "- step noise of the stochastic rows: " + (NOISE_NOTE if coupled else "each row's own draws (draw 0 of each step)"),
        f"- metric: {prob.quality.label}; held-out reference images: {prob.info.get('reference_images')}",
        f"- floor ({floor.get('sets')} sets of {floor.get('n')} real training images): "
        f"{floor.get(prob.quality.primary, float('nan')):.3f} ± {floor.get(prob.quality.primary + '_std', float('nan')):.3f}",
        f"- intervals: 95% paired percentile bootstrap, {replicates} resamples of the sample indices shared by all rows, "
        "re-centred on the estimate",
        f"- criterion: FD(row) - {MARGIN} FD(reference) < 0 over its whole interval ('yes'); 'no' when the interval "
        "lies above 0; otherwise 'not resolved'",
        f"- environment: python {env.get('python')}, torch {env.get('torch')}, sdesolve {env.get('sdesolve')}, "
        f"{env.get('device_name')}, load average {env.get('load_average')}", "",
        f"Reference: {ref_row['sampler']}, {ref_row['nfe']} NFE: FD {fmt(ref_row['fd'], *ref_row['fd_interval'])}; "
        f"{MARGIN} x reference = {MARGIN * ref_row['fd']:.3f}", "",
        "| sampler | grid | steps | NFE | FD [95%] | FD - ref [95%] | FD - 1.1 ref [95%] | within 10% |",
        "|---|---|---|---|---|---|---|---|"]
    for r in body:
        lines.append(f"| {r['sampler']} | {r['grid']} | {r['steps']} | {r['nfe']} | {fmt(r['fd'], *r['fd_interval'])} | "
                     f"{fmt(*r['fd_minus_ref'])} | {fmt(*r['fd_minus_margin_ref'])} | {r['within_10pct']} |")
    lines += ["", "## Summary", ""]
    if yes:
        b = yes[0]
        lines.append(f"- fewest NFE within 10% (resolved): {b['sampler']} on {b['grid']} at {b['nfe']} NFE, "
                     f"FD {b['fd']:.3f}, FD - 1.1 ref {fmt(*b['fd_minus_margin_ref'])}")
    else:
        lines.append("- no row is resolved within 10% of the reference at this n")
    est = sorted([r for r in body if r["within_10pct"] == "not resolved" and r["fd_minus_margin_ref"][0] < 0],
                 key=lambda r: (r["nfe"], r["fd"]))
    if est:
        lines.append("- within 10% by the estimate only (interval across 0): " + "; ".join(
            f"{r['sampler']} {r['grid']} @{r['nfe']} {fmt(*r['fd_minus_margin_ref'])}" for r in est))
    if dpm:
        lines.append(f"- DPM-Solver++(2M) SDE: first resolved within 10% at {dpm[0]['nfe']} NFE")
    else:
        tried = sorted(r["nfe"] for r in body if r["key"].startswith("dpmsde"))
        lines.append(f"- DPM-Solver++(2M) SDE: not resolved within 10% at any of {tried} NFE")
    # every other row against DPM-Solver++(2M) SDE at the same NFE (paired)
    versus = []
    dpm_at = {r["nfe"]: r["key"] for r in body if r["key"].startswith("dpmsde")}
    for r in body:
        if not r["key"].startswith("dpmsde") and r["nfe"] in dpm_at:
            c = compare(fd[r["key"]], fd[dpm_at[r["nfe"]]], boot.level)
            r["fd_minus_dpmsde_same_nfe"] = [c["diff"], c["lo"], c["hi"]]
            versus.append(f"| {r['sampler']} | {r['grid']} | {r['nfe']} | {fmt(c['diff'], c['lo'], c['hi'])} | "
                          f"{ {-1: 'better', 1: 'worse', 0: 'not resolved'}[c['sign']] } |")
    if versus:
        lines += ["", "## Against DPM-Solver++(2M) SDE at the same NFE (paired)", "",
                  "| sampler | grid | NFE | FD - FD(DPM-Solver++(2M) SDE) [95%] | |", "|---|---|---|---|---|"] + versus
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"command": command, "noise": NOISE_NOTE if coupled else "independent", "environment": env, "checkpoint": prob.info, "n": n, "seed": seed,
           "bootstrap": boot.describe(), "metric": prob.quality.primary, "floor": floor, "margin": MARGIN,
           "reference": ref_row, "rows": body}
    for path, text in ((out.with_suffix(".md"), "\n".join(lines) + "\n"), (out.with_suffix(".json"), json.dumps(res, indent=1))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="/work/runs/digits")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=400)
    ap.add_argument("--full", action="store_true", help="the full matrix of SA-Solver grids and orders (about 3200 "
                    "model evaluations per sample)")
    ap.add_argument("--independent-noise", action="store_true", help="stochastic rows draw their own step noise "
                    "instead of the reference's Brownian path (both are valid pairings; the path is the tighter one)")
    ap.add_argument("--only", default=None, help="run only the rows whose key contains one of these comma-separated texts")
    ap.add_argument("--report-only", action="store_true", help="no sampling: the report from the cached rows")
    ap.add_argument("--cache", default="runs/sde_reference", help="directory of the per-row features")
    ap.add_argument("--out", default="benchmarks/results/sde_reference")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    prob = problems.checkpoint_problem(args.checkpoint)
    coupled = not args.independent_noise
    cache = Path(args.cache) / f"n{args.n}-seed{args.seed}-{'path' if coupled else 'independent'}"
    cache.mkdir(parents=True, exist_ok=True)
    only = args.only.split(",") if args.only else None
    all_rows = rows(args.full)
    start = time.time()
    for key, label, solver, g, steps in all_rows:
        path = cache / f"{key}.pt"
        if args.report_only or path.exists() or (only and key != "ref" and not any(o in key for o in only)):
            continue
        # the first samples of a smaller run are the same samples: reuse them
        smaller = sorted((int(d.name.split("-")[0][1:]), d) for d in cache.parent.glob(f"n*-{cache.name.split('-', 1)[1]}")
                         if (d / f"{key}.pt").exists() and int(d.name.split("-")[0][1:]) < args.n)
        head = torch.load(smaller[-1][1] / f"{key}.pt", weights_only=True) if smaller else None
        feats, nfe, secs = run_row(prob, solver, GRIDS[g], steps, args.n, args.seed, args.batch, coupled,
                                   start=0 if head is None else head["features"].shape[0])
        if head is not None:
            feats, secs = torch.cat([head["features"], feats]), secs + head["seconds"]
        rec = {"features": feats, "nfe": nfe, "seconds": secs, "label": label, "solver": repr(solver), "grid": g,
               "steps": steps}
        torch.save(rec, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        print(f"{key:40s} NFE {nfe:4d}  {secs:6.1f}s  [{time.time() - start:.0f}s]", flush=True)
    table = {}
    for key, label, solver, g, steps in all_rows:
        path = cache / f"{key}.pt"
        if path.exists():
            table[key] = torch.load(path, weights_only=True)
    command = " ".join(["python", "benchmarks/sde_reference.py"] + (sys.argv[1:] if argv is None else list(argv)))
    report(prob, table, args.n, args.seed, args.bootstrap, Path(args.out), command, environment(torch.device("cpu")),
           coupled)


if __name__ == "__main__":
    main()
