"""Tables from benchmarks/few_step.py results: the lead per NFE (sdesolve's best sampler on its
default grid against the best peer on its own default, paired 95% bootstrap intervals), the
counterparts (an sdesolve solver on its peer's grid against the peer), and the grid choice.

    python benchmarks/few_step_report.py [--boot 200] benchmarks/results/few_step/*_lead.json > benchmarks/results/few_step/LEAD.md
    python benchmarks/few_step_report.py --defaults-table benchmarks/results/few_step/{ring8,gmm8d,digits}{,_extra}.json

The bootstrap needs the samples that few_step.py kept (its --samples .npz, named in the JSON):
B resamples of the sample indices (seeded), the same for every row of a problem.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import sdesolve as sds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import few_step  # noqa: E402

# the grids that few_step.py names, and the solvers' default grids (the class attribute) by name
DEFAULT_GRID = {
    "IPNDM(4)": sds.IPNDM.default_schedule, "IPNDM(4, afs)": sds.IPNDM.default_schedule,
    "DEIS(3)": sds.DEIS.default_schedule, "UniPC(3)": sds.UniPC.default_schedule, "UniPC(2)": sds.UniPC.default_schedule,
    "DPMSolverPP(3)": sds.DPMSolverPP.default_schedule, "DPMSolverPP(2)": sds.DPMSolverPP.default_schedule,
    "LMS(4)": sds.LMS.default_schedule, "EDMHeun": sds.EDMHeun.default_schedule,
    "SASolver(tau=0)": sds.SASolver.default_schedule, "SASolver": sds.SASolver.default_schedule,
    "SASolver(2, 2, tau=0)": sds.SASolver.default_schedule, "SASolver(2, 2)": sds.SASolver.default_schedule,
    "DPMSolverPP(2, sde)": sds.DPMSolverPP.default_schedule,
    "DPMSolverPP3MSDE": sds.DPMSolverPP3MSDE.default_schedule, "DPMSolverPPSDE": sds.DPMSolverPPSDE.default_schedule,
}
COUNTERPARTS = [("EDMHeun", "karras7->0", "k-diffusion heun (to 0)"),
                ("DPMSolverPP(2)", "karras7->0", "k-diffusion dpmpp_2m (to 0)"),
                ("LMS(4)", "karras7->0", "k-diffusion lms (to 0)"),
                ("UniPC(2)", "linspace_timesteps", "diffusers UniPCMultistep (default)")]


def grid_name(schedule) -> str:
    n = getattr(schedule, "__name__", str(schedule))
    table = {"append_zero(karras(rho=7.0))": "karras7->0", "logsnr": "logsnr", "append_zero(uniform)": "uniform->0",
             "karras(rho=7.0)": "karras7", "append_zero(logsnr)": "logsnr->0", "quadratic": "quadratic",
             "time_uniform(rho=2.0)": "time_uniform2", "time_uniform(rho=1.5)": "time_uniform1.5",
             "time_uniform(rho=1.75)": "time_uniform1.75"}
    if n.startswith("linspace_timesteps(") and n.endswith("final_zero=True)"):
        return "linspace_timesteps"
    return table.get(n, n)


def ci(v):
    v = torch.tensor(v, dtype=torch.float64)
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return float("nan"), float("nan")
    return float(torch.quantile(v, 0.025)), float(torch.quantile(v, 0.975))


def g(x, d=4):
    return "nan" if x != x else f"{x:.{d}g}"


class Boot:
    """Bootstrap distributions of rows' metrics, on shared resamples of the sample indices:
    {metric name: (B,) values} per row."""

    def __init__(self, res, B):
        from sdesolve.bench import problems
        if res["problem"] == "digits":
            prob = problems.checkpoint_problem(res["checkpoint"])
        else:
            mix = {"ring8": problems.ring8, "gmm8d": problems.gmm8d}[res["problem"]]()
            prob = problems.mixture_problem(mix)
        self.metric = few_step.Metrics(prob.quality, res["metric"])
        self.samples = np.load(res["samples"])
        idx = torch.randint(0, res["n"], (B, res["n"]), generator=torch.Generator().manual_seed(12345))
        self.counts = torch.stack([torch.bincount(i, minlength=res["n"]) for i in idx]).double()
        self.reps, self.cache = {}, {}

    def __call__(self, row, name=None):
        k, name = row["sample_key"], name or self.metric.primary
        if (k, name) not in self.cache:
            if k not in self.reps:
                self.reps[k] = self.metric.prepare(torch.from_numpy(self.samples[k]))
            self.cache[k, name] = self.metric(self.reps[k], self.counts, [name])[name]
        return self.cache[k, name].tolist()


def _diff_cell(boot, a, b, name) -> str:
    d = [x - y for x, y in zip(boot(a, name), boot(b, name))]
    lo, hi = ci(d)
    pa, pb = a.get("metrics", {}).get(name, float("nan")), b.get("metrics", {}).get(name, float("nan"))
    return f" {g(pa - pb, 3)} [{g(lo, 3)}, {g(hi, 3)}] |"


def report(res, B) -> str:
    boot = Boot(res, B)
    for r in res["rows"]:
        r["boot"] = None
    rows, floor = res["rows"], res["floor"].get(res["metric"], float("nan"))

    def bt(r):
        if r["boot"] is None:
            r["boot"] = boot(r)
        return r["boot"]
    out = [f"### {res['problem']}: {res['label']}, n = {res['n']}, {B} paired bootstrap resamples",
           f"floor (exact samples of the same size): {g(floor)}", ""]
    second = [m.name for m in boot.metric.metrics if m.name != boot.metric.primary]

    def best(rs):
        return min(rs, key=lambda r: r["metric"] if r["metric"] == r["metric"] else float("inf"))

    def lead_cells(a, b):
        """ours - peer with its interval, the excess reduction, resolved, the other metrics' differences."""
        lo, hi = ci([x - y for x, y in zip(bt(a), bt(b))])
        red = 1 - (a["metric"] - floor) / (b["metric"] - floor) if b["metric"] > floor else float("nan")
        return (f"{g(a['metric'] - b['metric'], 3)} [{g(lo, 3)}, {g(hi, 3)}] | {100 * red:.0f}% | "
                f"{'yes' if hi < 0 or lo > 0 else 'no'} |" + "".join(_diff_cell(boot, a, b, k) for k in second))
    nfes = sorted({r["nfe_budget"] for r in rows})
    out += ["| NFE | best sdesolve (default grid) | metric [95%] | best peer (its default) | metric [95%] | "
            "ours - peer [95%] | excess reduction | resolved |" + "".join(f" {k}: ours - peer [95%] |" for k in second),
            "|---|---|---|---|---|---|---|---|" + "---|" * len(second)]
    for n in nfes:
        mine = [r for r in rows if r["nfe_budget"] == n and not r["peer"] and r["sampler"] in DEFAULT_GRID
                and r["grid"] == grid_name(DEFAULT_GRID[r["sampler"]])]
        theirs = [r for r in rows if r["nfe_budget"] == n and r["peer"]]
        if not mine or not theirs:
            continue
        a, b = best(mine), best(theirs)
        out.append(f"| {n} | {a['sampler']} {a['grid']} (NFE {a['nfe']}) | {g(a['metric'])} "
                   f"[{g(ci(bt(a))[0])}, {g(ci(bt(a))[1])}] | {b['sampler']} (NFE {b['nfe']}) | {g(b['metric'])} "
                   f"[{g(ci(bt(b))[0])}, {g(ci(bt(b))[1])}] | " + lead_cells(a, b))
    opt_rows = [r for r in rows if r["grid"] in ("dp", "learned")]
    if opt_rows:
        out += ["", "Grids optimized for this model, solver and NFE (`sds.schedules.optimize` on calibration seeds, "
                "evaluated on the evaluation seed's samples): the best optimized row against the best peer row:", "",
                "| NFE | best optimized row | metric [95%] | optimization s | best peer | metric | ours - peer [95%] | "
                "excess reduction | resolved |" + "".join(f" {k}: ours - peer [95%] |" for k in second),
                "|---|---|---|---|---|---|---|---|---|" + "---|" * len(second)]
        for n in sorted({r["nfe_budget"] for r in opt_rows}):
            mine = [r for r in opt_rows if r["nfe_budget"] == n]
            theirs = [r for r in rows if r["nfe_budget"] == n and r["peer"]]
            if not theirs:
                continue
            a, b = best(mine), best(theirs)
            out.append(f"| {n} | {a['sampler']} {a['grid']} (NFE {a['nfe']}) | {g(a['metric'])} "
                       f"[{g(ci(bt(a))[0])}, {g(ci(bt(a))[1])}] | {a.get('optimization_seconds', float('nan')):.1f} | "
                       f"{b['sampler']} (NFE {b['nfe']}) | {g(b['metric'])} | " + lead_cells(a, b))
    out += ["", "Counterparts on the peer's default grid (ours - peer):", "",
            "| NFE | sdesolve row | peer | ours | peer | ours - peer [95%] |", "|---|---|---|---|---|---|"]
    for lab, grid, peer in COUNTERPARTS:
        for n in nfes:
            a = [r for r in rows if r["nfe_budget"] == n and r["sampler"] == lab and r["grid"] == grid and not r["peer"]]
            b = [r for r in rows if r["nfe_budget"] == n and r["sampler"] == peer]
            if a and b:
                a, b = a[0], b[0]
                lo, hi = ci([x - y for x, y in zip(bt(a), bt(b))])
                out.append(f"| {n} | {lab} {grid} | {peer} | {g(a['metric'])} | {g(b['metric'])} | "
                           f"{g(a['metric'] - b['metric'], 3)} [{g(lo, 3)}, {g(hi, 3)}] |")
    out += ["", "All rows (metric per NFE budget):", "", "| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes)
            + " |", "|---|---|" + "---|" * len(nfes)]
    keys = []
    for r in rows:
        k = (r["sampler"], r["grid"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        vals = []
        for n in nfes:
            m = [r for r in rows if (r["sampler"], r["grid"]) == k and r["nfe_budget"] == n]
            vals.append(f"{g(m[0]['metric'])} ({m[0]['steps']} st)" if m else "-")
        out.append(f"| {k[0]} | {k[1]} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def defaults_table(results) -> str:
    """The choice of each solver's default grid: for every (solver, candidate grid) row, its excess
    over the floor relative to the best peer's excess at the same budget, (m - floor) / (peer -
    floor), averaged over the NFE budgets and the problems that every candidate of the solver ran
    on (lower is better; 1 = the best peer's excess). The lowest of ``few_step.DEFAULT_CANDIDATES``
    (the grids valid on every process) is in bold."""
    table, nfes, best_peer = {}, set(), {}  # best_peer: the peers' rows may be in another file of the problem
    for res in results:
        for r in res["rows"]:
            if r["peer"] and r["metric"] == r["metric"]:
                key = res["problem"], r["nfe_budget"]
                best_peer[key] = min(best_peer.get(key, float("inf")), r["metric"])
    problems = list(dict.fromkeys(res["problem"] for res in results))
    for res in results:
        floor = res["floor"][res["metric"]]
        for r in res["rows"]:
            if r["peer"] or r["grid"] not in few_step.CANDIDATES or (res["problem"], r["nfe_budget"]) not in best_peer:
                continue
            ratio = (r["metric"] - floor) / (best_peer[res["problem"], r["nfe_budget"]] - floor)
            ratio = ratio if ratio == ratio else float("inf")  # a row that diverged
            cell = table.setdefault((r["sampler"], r["grid"]), {})
            cell[res["problem"], r["nfe_budget"]] = (ratio, r["metric"])
            nfes.add(r["nfe_budget"])
    nfes = sorted(nfes)
    out = ["| solver | default grid | candidate | mean excess ratio | " + " | ".join(problems) + " |",
           "|---|---|---|---|" + "---|" * len(problems)]
    for solver in dict.fromkeys(k[0] for k in table):
        cands = [(g, table[solver, g]) for g in few_step.CANDIDATES if (solver, g) in table]
        if len(cands) < 2:  # a counterpart on its peer's grid only: nothing to choose
            continue
        # the mean over the cells that every candidate of this solver has (the problems it ran on)
        common = set.intersection(*(set(c) for _, c in cands))
        cands = [(g, c, sum(c[k][0] for k in common) / len(common) if common else float("inf")) for g, c in cands]
        cands.sort(key=lambda x: x[2])
        chosen = next(gname for gname, _, _ in cands if gname in few_step.DEFAULT_CANDIDATES)
        current = grid_name(DEFAULT_GRID[solver]) if solver in DEFAULT_GRID else "-"
        for i, (gname, c, mean) in enumerate(cands):
            cells = ["/".join(g(c[p, n][1], 3) if (p, n) in c else "-" for n in nfes) for p in problems]
            shown = (f"**{gname}**" if gname == chosen else
                     gname if gname in few_step.DEFAULT_CANDIDATES else f"{gname} (not valid on every path)")
            out.append(f"| {solver if i == 0 else ''} | {current if i == 0 else ''} | {shown} | {g(mean, 3)} | "
                       + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--defaults-table", action="store_true", help="only the table that chooses the default grids")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    paths = args.paths
    if args.defaults_table:
        results = []
        for p in paths:
            with open(p) as f:
                results.append(json.load(f))
        print(defaults_table(results))
        return
    print("# Few-step sampling: sdesolve against k-diffusion and diffusers at 5-10 model evaluations\n")
    print("Made by `python benchmarks/few_step_report.py " + " ".join(paths) + "` from the results of "
          "`benchmarks/few_step.py` (the command of each is in its JSON). A difference counts as resolved when its "
          "paired 95% interval excludes 0; the excess reduction is 1 - (ours - floor) / (peer - floor).\n")
    for p in paths:
        with open(p) as f:
            print(report(json.load(f), args.boot), flush=True)


if __name__ == "__main__":
    main()
