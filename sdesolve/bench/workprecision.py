"""Work–precision: the error of deterministic samplers against a tight reference solve of the
same probability-flow ODE from the same x_T, against the work (model evaluations per sample and
wall time) — the standard figure of numerical ODE work (Hairer & Wanner, "Solving Ordinary
Differential Equations II", sec. IV.10; DifferentialEquations.jl's work-precision diagrams).

Every row starts sample i from x_T[i] (:func:`sdesolve.bench.runner.initial_noise`); the
reference solves the same samples with ``reference`` (default ``Dopri5(rtol=atol=1e-6)``), and a
check solve at ten times its tolerance estimates the reference's own error: a row whose error is
near that estimate is measuring the reference, not itself. The error of sample i is the RMS over
its D elements, in the model's space (before the map to data, which may clip),

    e_i = ||y_i - y*_i||_2 / sqrt(D),

and a row's error is the mean of e_i over the n samples, with a paired bootstrap interval over
sample indices (:mod:`sdesolve.bench.paired`). Rows are the fixed-step samplers at NFE budgets,
the adaptive ones at tolerances, and peers (torchdiffeq's dopri5/bosh3, torchode where it
installs) on the same x_T; the timing is the benchmark runner's (warm-up, repeats, median and
range). Stochastic samplers have no pathwise limit to compare with here and are refused.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..integrate import sample as sds_sample
from . import distributed as dist
from .paired import MeanOf
from .quality import Quality
from .runner import initial_noise, run, solver_label

__all__ = ["reference_solve", "work_precision", "markdown", "plot", "write"]


def reference_solve(problem, solver, *, n: int, seed: int = 0, batch_size: int = 1000, device="cpu") -> dict:
    """The samples of ``solver`` (adaptive, tight) from the benchmark's x_T, in model space,
    all n of them in global order on every rank; with its evaluations per sample and seconds."""
    device = torch.device(device)
    lo, hi = dist.shard(n)
    shape = tuple(problem.sample_shape)
    parts, evals, start = [], 0, time.perf_counter()
    with torch.no_grad():
        for b_lo in range(lo, hi, batch_size):
            b = min(batch_size, hi - b_lo)
            x_T = initial_noise(problem.process, (b,) + shape, seed, b_lo, device)
            sol = sds_sample(problem.process, problem.score, solver, x_T=x_T, seed=seed, sample_offset=b_lo)
            parts.append(sol.y.detach().reshape(b, -1).to("cpu", torch.float64))
            evals += int(sol.stats.sample_nfe)
    width = int(torch.Size(shape).numel())
    y = dist.gather(torch.cat(parts) if parts else torch.zeros(0, width, dtype=torch.float64))
    evals = float(dist.all_sum(torch.tensor([float(evals)], dtype=torch.float64))[0])
    return {"y": y, "solver": solver_label(solver), "tolerance": getattr(solver, "rtol", None),
            "nfe_per_sample": evals / n, "seconds": dist.all_max(time.perf_counter() - start)}


def _rms_error(reference: torch.Tensor):
    def fn(rep):
        return ((rep - reference.to(rep.device)) ** 2).mean(1).sqrt()
    return fn


def work_precision(problem, entries, *, n: int, reference, seed: int = 0, batch_size: int = 1000, device="cpu",
                   warmup: int = 8, repeats: int = 3, bootstrap: int = 400, level: float = 0.95,
                   progress: bool = True, log=print) -> dict:
    """Run ``entries`` (deterministic samplers) on ``problem`` with n samples and measure each
    row's error against the ``reference`` solver's solve of the same x_T (see the module's
    docstring). Returns the runner's results with ``meta["work_precision"]`` describing the
    reference and its check."""
    stochastic = [e.label for e in entries if getattr(e.sampler, "stochastic", False)]
    if stochastic:
        raise ValueError(f"work-precision compares deterministic samplers with the probability-flow ODE's "
                         f"solution; these are stochastic: {', '.join(stochastic)}")
    if not getattr(reference, "adaptive", False):
        raise ValueError(f"the reference solve needs an adaptive solver with a tight tolerance, got "
                         f"{solver_label(reference)}")
    device = torch.device(device)
    problem.to(device)
    ref = reference_solve(problem, reference, n=n, seed=seed, batch_size=batch_size, device=device)
    check_solver = copy.copy(reference)
    check_solver.rtol, check_solver.atol = 10 * reference.rtol, 10 * reference.atol
    check = reference_solve(problem, check_solver, n=n, seed=seed, batch_size=batch_size, device=device)
    ref_error = float(_rms_error(ref["y"])(check["y"]).mean())
    metric = MeanOf("error", _rms_error(ref["y"]),
                    label=f"mean over samples of the RMS difference to {ref['solver']} "
                          f"tol={ref['tolerance']:g} from the same x_T (model space; lower is better)")
    quality = Quality([metric], info={"kind": "work-precision"})
    wp_problem = replace(problem, quality=quality, to_data=lambda y: y)
    results = run(wp_problem, entries, n=n, seed=seed, batch_size=batch_size, device=device, warmup=warmup,
                  repeats=repeats, bootstrap=bootstrap, level=level, progress=progress, log=log)
    results["meta"]["work_precision"] = {
        "reference": ref["solver"], "reference_tolerance": ref["tolerance"],
        "reference_nfe_per_sample": ref["nfe_per_sample"], "reference_seconds": ref["seconds"],
        "check": f"{check['solver']} tol={check['tolerance']:g}", "check_nfe_per_sample": check["nfe_per_sample"],
        "reference_error_estimate": ref_error}
    return results


def _g(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else "nan"
    return str(v)


def markdown(results: dict) -> str:
    meta, rows = results["meta"], results["rows"]
    wp = meta["work_precision"]
    lvl = meta.get("level", 0.95)
    out = [f"# Work–precision: {meta['problem']}", "",
           f"- command: `{meta['command']}`",
           f"- {meta['n']} samples from the same x_T (sha1 {rows[0]['x_T_sha1'] if rows else '–'}), seed {meta['seed']}; "
           f"device {meta['device']} — {meta['device_name']}; torch {meta['torch']}",
           f"- reference: {wp['reference']} tol={wp['reference_tolerance']:g} "
           f"({_g(wp['reference_nfe_per_sample'], 4)} NFE/sample); the check {wp['check']} differs from it by "
           f"{_g(wp['reference_error_estimate'])}, an upper bound on the reference's own error: errors near it "
           "measure the reference",
           f"- error: {meta['quality']['labels']['error']}; interval: {lvl:.0%} paired bootstrap over samples",
           f"- time: median over {meta.get('repeats')}+ timed batches of {meta.get('timed_batch')} samples, "
           "x n [fastest, slowest]", "",
           "| sampler | library | NFE budget / tol | NFE/sample | seconds [range] | error [interval] | "
           "log10 error | time grid |", "|---|---|---|---|---|---|---|---|"]
    floor = wp["reference_error_estimate"]
    for r in sorted(rows, key=lambda r: (r["family"], r["nfe_per_sample"])):
        e = r["metrics"].get("error")
        iv = r.get("intervals", {}).get("error")
        cell = _g(e) + (f" [{_g(iv[0])}, {_g(iv[1])}]" if iv and iv[0] is not None and math.isfinite(iv[0]) else "")
        if r["error"]:
            cell = f"failed: {r['error'][:80]}"
        elif e is not None and math.isfinite(e) and e < 3 * floor:
            cell += " (at the reference's accuracy)"
        budget = f"tol={r['tolerance']:g}" if r["adaptive"] else _g(r["nfe_requested"])
        secs = (f"{r['seconds']:.3g} [{r['seconds_lo']:.3g}, {r['seconds_hi']:.3g}]"
                if r.get("seconds_lo") is not None and math.isfinite(r["seconds_lo"]) else _g(r.get("seconds")))
        lg = f"{math.log10(e):.2f}" if e is not None and math.isfinite(e) and e > 0 else "–"
        grid = ("adaptive" if r["adaptive"] else ("peer's own" if r["peer"] else
                f"{r.get('schedule')}, {len(r['grid']) - 1} steps" if r.get("grid") else "–"))
        out.append(f"| {r['family']} | {r['library']} | {budget} | {_g(r['nfe_per_sample'], 4)} | {secs} | {cell} | "
                   f"{lg} | {grid} |")
    if results.get("skipped"):
        out += ["", "Skipped peers:", ""] + [f"- {s['sampler']}: {s['reason']}" for s in results["skipped"]]
    return "\n".join(out) + "\n"


def plot(results: dict, path) -> Path:
    """Two log-log panels: error against evaluations per sample and against wall time, one line
    per solver (peers dashed, diamonds), interval and timing-range error bars, the reference's own
    error estimate dotted."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if not r["error"] and r["metrics"].get("error") is not None
            and math.isfinite(r["metrics"]["error"]) and r["metrics"]["error"] > 0]
    fams = {}
    for r in rows:
        fams.setdefault((r["peer"], r["family"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6), sharey=True)
    cmap = plt.get_cmap("tab20")
    for j, ((peer, fam), rs) in enumerate(sorted(fams.items())):
        rs = sorted(rs, key=lambda r: r["nfe_per_sample"])
        color = cmap((2 * j) % 20 + (j // 10) % 2)
        ys = [r["metrics"]["error"] for r in rs]
        yerr = [[max(y - (r["intervals"]["error"][0] or y), 0) for y, r in zip(ys, rs)],
                [max((r["intervals"]["error"][1] or y) - y, 0) for y, r in zip(ys, rs)]]
        for ax, key in ((axes[0], "nfe_per_sample"), (axes[1], "seconds")):
            xs = [r[key] for r in rs]
            xerr = None
            if key == "seconds":
                xerr = [[max(r["seconds"] - r["seconds_lo"], 0) for r in rs],
                        [max(r["seconds_hi"] - r["seconds"], 0) for r in rs]]
            ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, ls="--" if peer else "-", marker="D" if peer else "o",
                        ms=5, color=color, mfc="white" if peer else color, lw=1.2, capsize=2,
                        label=fam if ax is axes[0] else None)
    floor = results["meta"]["work_precision"]["reference_error_estimate"]
    for ax, xl in ((axes[0], "model evaluations per sample"), (axes[1], "wall time (s, median of repeats)")):
        if floor > 0:
            ax.axhline(floor, color="gray", ls=":", lw=1.2, label="reference's own error" if ax is axes[0] else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.grid(True, which="both", alpha=0.25)
    wp = results["meta"]["work_precision"]
    axes[0].set_ylabel(f"RMS error vs {wp['reference']} tol={wp['reference_tolerance']:g}\n"
                       f"(error bars: {results['meta'].get('level', 0.95):.0%} paired bootstrap)", fontsize=9)
    fig.suptitle(f"Work–precision, {results['meta']['problem']}: {results['meta']['n']} samples, same x_T",
                 fontsize=10)
    from .report import finish_figure
    return finish_figure(fig, axes, path)


def write(results: dict, out) -> dict:
    """work_precision.json, work_precision.md and work_precision.png in the directory ``out``."""
    from ..fileio import atomic_write
    from .report import _plain
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results.pop("_replicates", None)
    paths = {"json": out / "work_precision.json", "md": out / "work_precision.md", "png": out / "work_precision.png"}
    for key, text in (("json", json.dumps(_plain(results), indent=1, allow_nan=False)), ("md", markdown(results))):
        atomic_write(paths[key], lambda tmp, text=text: Path(tmp).write_text(text))
    try:
        plot(results, paths["png"])
    except ImportError as e:
        print(f"no plot: {e}")
        paths["png"] = None
    return paths
