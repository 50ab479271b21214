"""What a benchmark run writes: ``results.json``, ``results.md``, ``summary.md`` and ``pareto.png``.

The analysis (:func:`analyse`) compares rows through paired intervals (:mod:`sdesolve.bench.paired`):
every row starts from the same x_T, and one bootstrap over sample indices, shared by all rows,
gives each metric an interval and each difference between two rows an interval of its own. A
difference whose interval contains 0 is *not resolved at this n*: it is never counted as a win.
Without bootstrap replicates (``--bootstrap 0``) the point estimates decide, and the report says
so.

* Each row against the reference row (e.g. 1000 Euler-Maruyama steps): the paired difference of
  every metric with its interval, and its status: better, worse or not resolved.
* Pareto fronts of (cost, primary metric), cost the wall time (median over the timing repeats)
  or the model evaluations per sample: row j dominates row i when j costs at most as much and
  either j's metric is resolved lower, or the two are not resolved apart and j costs strictly
  less. The front is the rows nothing dominates: a row is on it only where its advantage over
  every cheaper row is resolved. Rows on the point-estimate front that fall off are listed as not
  resolved at this n.
* Within 10% of the reference: for each sampler family, its first row (by evaluations per sample)
  whose metric is resolved below 1.1 times the reference's (the interval of m_row - 1.1 m_ref
  lies below 0) and whose speed-up is resolved (its slowest timing repeat beats the reference's
  fastest). A family with no such row is "not resolved at this n" when some row's comparison is
  unresolved, "not within" otherwise. The same for the deterministic samplers against the
  probability-flow ODE's limit, estimated by sdesolve's adaptive ODE row at the tightest tolerance.
* Peers: each peer row beside the sdesolve row of its counterpart at the same budget or tolerance,
  the ratio of their metrics with the paired difference's status, and the ratio of wall times.
* Summary (``summary.md``): the best row at each NFE budget with its interval and the rows not
  resolved from it, the reference and the ODE limit, and where the peers stand.

The plot has two panels, metric against wall time and against evaluations per sample, both
log-log, with error bars (the metric's interval; the timing repeats' range); sdesolve samplers are
circles joined by solid lines, peers diamonds joined by dashed lines, the reference a star, the
fronts a black staircase with ringed points; dotted lines mark the reference metric, 1.1 times
it, the probability-flow ODE's limit and the floor (real or exact data of the same size).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .paired import compare

__all__ = ["pareto_front", "resolved_front", "analyse", "markdown", "summary", "plot", "write"]

WITHIN = 0.10
NOT_RESOLVED = "not resolved at this n"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto_front(points) -> list:
    """For (cost, metric) pairs (None or non-finite entries are never on the front), a list of
    bools: is point i non-dominated (no other point at most as costly and at most as bad, and
    strictly better in one)."""
    pts = [(c, m) if _finite(c) and _finite(m) else None for c, m in points]
    out = []
    for i, p in enumerate(pts):
        if p is None:
            out.append(False)
            continue
        dominated = any(q is not None and j != i and q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])
                        for j, q in enumerate(pts))
        out.append(not dominated)
    return out


def resolved_front(costs, sign) -> list:
    """Pareto front with resolved comparisons: ``costs[i]`` (None/non-finite: not a candidate)
    and ``sign(j, i)`` in {-1, 0, +1}, the resolved sign of metric_j - metric_i (0: not resolved;
    None: either metric missing). Row j dominates row i when cost_j <= cost_i and either
    sign(j, i) = -1, or sign(j, i) = 0 and cost_j < cost_i."""
    n = len(costs)
    ok = [_finite(c) for c in costs]
    out = []
    for i in range(n):
        if not ok[i] or sign(i, i) is None:
            out.append(False)
            continue
        dom = False
        for j in range(n):
            if j == i or not ok[j] or costs[j] > costs[i]:
                continue
            sj = sign(j, i)
            if sj is None:
                continue
            if sj < 0 or (sj == 0 and costs[j] < costs[i]):
                dom = True
                break
        out.append(not dom)
    return out


def _metric(row, primary):
    if row.get("error"):
        return None
    v = row["metrics"].get(primary)
    return v if _finite(v) else None


class _Paired:
    """Paired comparisons of rows from their bootstrap values (or point estimates without)."""

    def __init__(self, results):
        self.rows = results["rows"]
        self.reps = results.get("_replicates")
        self.level = results["meta"].get("level", 0.95)
        self.have = bool(self.reps) and any(len(v) for r in self.reps for v in r.values()) and all(
            v.numel() > 1 for r in self.reps for v in r.values())
        self._cache = {}

    def values(self, i, metric):
        if self.rows[i].get("error"):
            return None
        if self.have:
            v = self.reps[i].get(metric)
            return v if v is not None and torch.isfinite(v[0]) else None
        m = self.rows[i]["metrics"].get(metric)
        return torch.tensor([float(m)], dtype=torch.float64) if _finite(m) else None

    def cmp(self, i, j, metric, factor=1.0):
        """metric_i - factor * metric_j with its interval and resolved sign (None if missing)."""
        key = (i, j, metric, factor)
        if key not in self._cache:
            a, b = self.values(i, metric), self.values(j, metric)
            if a is None or b is None:
                self._cache[key] = None
            elif self.have:
                self._cache[key] = compare(a, factor * b, self.level)
            else:
                d = float(a[0] - factor * b[0])
                self._cache[key] = {"diff": d, "lo": None, "hi": None, "resolved": d != 0,
                                    "sign": (d > 0) - (d < 0)}
        return self._cache[key]

    def sign(self, i, j, metric):
        c = self.cmp(i, j, metric)
        return None if c is None else (0 if i == j else c["sign"])


def _speed_resolved(row, target) -> bool:
    """The row's slowest timing repeat beats the target's fastest."""
    hi, lo = row.get("seconds_hi"), target.get("seconds_lo")
    if _finite(hi) and _finite(lo):
        return hi < lo
    return _finite(row.get("seconds")) and _finite(target.get("seconds")) and row["seconds"] < target["seconds"]


def analyse(results: dict, within: float = WITHIN) -> dict:
    rows, primary = results["rows"], results["meta"]["quality"]["primary"]
    metrics = results["meta"]["quality"].get("metrics", [primary])
    P = _Paired(results)
    ms = [_metric(r, primary) for r in rows]
    front_t_point = pareto_front([(r["seconds"], m) for r, m in zip(rows, ms)])
    front_n_point = pareto_front([(r["nfe_per_sample"], m) for r, m in zip(rows, ms)])

    def sgn(j, i):
        return P.sign(j, i, primary)

    front_t = resolved_front([r["seconds"] if ms[i] is not None else None for i, r in enumerate(rows)], sgn)
    front_n = resolved_front([r["nfe_per_sample"] if ms[i] is not None else None for i, r in enumerate(rows)], sgn)
    ref_i = next((i for i, r in enumerate(rows) if r["reference"]), None)
    ref = rows[ref_i] if ref_i is not None else None
    ref_m = ms[ref_i] if ref_i is not None else None

    vs_ref = []
    for i in range(len(rows)):
        entry = {}
        if ref_i is not None and i != ref_i:
            for k in metrics:
                c = P.cmp(i, ref_i, k)
                if c is not None:
                    entry[k] = {**c, "status": ("better" if c["sign"] < 0 else "worse") if c["resolved"]
                                else "not resolved"}
        vs_ref.append(entry)

    def reach_of(target_i, keep):
        """Per sampler family (rows kept by ``keep``, without the target row itself): its first
        row, by evaluations per sample, resolved within ``within`` of the target's metric with a
        resolved speed-up."""
        target, target_m = rows[target_i], ms[target_i]
        fams = {}
        for i, r in enumerate(rows):
            if i != target_i and keep(r):
                fams.setdefault(r["family"], []).append(i)
        out = []
        for fam, idx in fams.items():
            idx = sorted(idx, key=lambda i: rows[i]["nfe_per_sample"])
            entry = {"sampler": fam, "library": rows[idx[0]]["library"], "peer": rows[idx[0]]["peer"],
                     "adaptive": rows[idx[0]]["adaptive"]}
            tests = {i: P.cmp(i, target_i, primary, 1.0 + within) for i in idx}
            hit = next((i for i in idx if tests[i] is not None and tests[i]["sign"] < 0
                        and _speed_resolved(rows[i], target)), None)
            quality_only = next((i for i in idx if tests[i] is not None and tests[i]["sign"] < 0), None)
            unresolved = next((i for i in idx if tests[i] is not None and tests[i]["sign"] == 0), None)
            if hit is not None:
                r = rows[hit]
                entry.update(reached=True, status="within", row=r["sampler"], nfe=r["nfe"],
                             nfe_per_sample=r["nfe_per_sample"], tolerance=r["tolerance"], metric=ms[hit],
                             interval=r.get("intervals", {}).get(primary), seconds=r["seconds"],
                             test=tests[hit],
                             speedup=target["seconds"] / r["seconds"] if r["seconds"] else None)
            else:
                best = min((i for i in idx if ms[i] is not None), key=lambda i: ms[i], default=None)
                entry.update(reached=False, max_nfe_per_sample=max(rows[i]["nfe_per_sample"] for i in idx),
                             best_metric=ms[best] if best is not None else None)
                if quality_only is not None:
                    r = rows[quality_only]
                    entry.update(status="within, speed-up " + NOT_RESOLVED, row=r["sampler"],
                                 speedup=target["seconds"] / r["seconds"] if r["seconds"] else None)
                elif unresolved is not None:
                    r = rows[unresolved]
                    entry.update(status=NOT_RESOLVED, row=r["sampler"], test=tests[unresolved])
                else:
                    entry.update(status="not within")
            out.append(entry)
        return out

    reach = reach_of(ref_i, lambda r: True) if ref_m is not None else []
    ode_i = min((i for i, r in enumerate(rows) if r["adaptive"] and not r["stochastic"] and not r["peer"]
                 and ms[i] is not None), key=lambda i: rows[i]["tolerance"], default=None)
    reach_ode = reach_of(ode_i, lambda r: not r["stochastic"]) if ode_i is not None else []

    ours = {}
    for i, r in enumerate(rows):
        if not r["peer"]:
            ours[(r["family"], r["nfe_requested"], r["tolerance"])] = i
    peers = []
    for i, r in enumerate(rows):
        if not r["peer"]:
            continue
        j = ours.get((r["counterpart"], r["nfe_requested"], r["tolerance"]))
        p = {"sampler": r["sampler"], "nfe": r["nfe"], "metric": ms[i], "interval": r.get("intervals", {}).get(primary),
             "seconds": r["seconds"], "front_time": front_t[i], "front_nfe": front_n[i],
             "counterpart": r["counterpart"] or None}
        if j is not None:
            c = P.cmp(i, j, primary)
            p.update(ours=rows[j]["sampler"], ours_nfe=rows[j]["nfe"], ours_metric=ms[j],
                     ours_seconds=rows[j]["seconds"],
                     metric_ratio=ms[i] / ms[j] if ms[i] is not None and ms[j] else None,
                     difference=c, status=(("better" if c["sign"] < 0 else "worse") if c["resolved"]
                                           else "not resolved") if c else None,
                     time_ratio=r["seconds"] / rows[j]["seconds"] if rows[j]["seconds"] else None)
        peers.append(p)

    budgets = sorted({r["nfe_requested"] for r in rows if not r["adaptive"] and not r["reference"]
                      and r["nfe_requested"] is not None})
    best_at = []
    for b in budgets:
        idx = [i for i, r in enumerate(rows) if r["nfe_requested"] == b and not r["adaptive"] and not r["reference"]
               and ms[i] is not None]
        if not idx:
            continue
        k = min(idx, key=lambda i: ms[i])
        ties = [rows[i]["sampler"] for i in idx if i != k and P.sign(i, k, primary) == 0]
        best_at.append({"budget": b, "best": rows[k]["sampler"], "library": rows[k]["library"], "metric": ms[k],
                        "interval": rows[k].get("intervals", {}).get(primary), "nfe_per_sample": rows[k]["nfe_per_sample"],
                        "not_resolved_from": ties, "candidates": len(idx)})

    floor = (results.get("floor") or {}).get(primary)
    lead = []
    for b in budgets:
        def best_of(keep):
            idx = [i for i, r in enumerate(rows) if r["nfe_requested"] == b and not r["adaptive"] and not r["reference"]
                   and ms[i] is not None and keep(r)]
            return min(idx, key=lambda i: ms[i]) if idx else None
        j = best_of(lambda r: r["peer"])
        if j is None:
            continue
        for kind, keep in (("default grid", lambda r: not r["peer"] and not r.get("grid_method")),
                           ("optimized grid", lambda r: not r["peer"] and r.get("grid_method"))):
            i = best_of(keep)
            if i is None:
                continue
            c = P.cmp(i, j, primary)
            red = (1.0 - (ms[i] - floor) / (ms[j] - floor)) if _finite(floor) and ms[j] > floor else None
            lead.append({"budget": b, "kind": kind, "ours": rows[i]["sampler"], "ours_metric": ms[i],
                         "peer": rows[j]["sampler"], "peer_metric": ms[j], "difference": c,
                         "excess_reduction": red,
                         "status": (("better" if c["sign"] < 0 else "worse") if c["resolved"] else "not resolved")
                         if c else None})

    unresolved_t = [rows[i]["sampler"] for i in range(len(rows)) if front_t_point[i] and not front_t[i]]
    unresolved_n = [rows[i]["sampler"] for i in range(len(rows)) if front_n_point[i] and not front_n[i]]
    return {"primary": primary, "within": within, "intervals": P.have, "level": P.level,
            "reference": ref["sampler"] if ref else None,
            "reference_metric": ref_m, "reference_interval": ref.get("intervals", {}).get(primary) if ref else None,
            "reference_seconds": ref["seconds"] if ref else None,
            "ode_reference": rows[ode_i]["sampler"] if ode_i is not None else None,
            "ode_reference_metric": ms[ode_i] if ode_i is not None else None,
            "ode_reference_interval": rows[ode_i].get("intervals", {}).get(primary) if ode_i is not None else None,
            "ode_reference_seconds": rows[ode_i]["seconds"] if ode_i is not None else None, "reach_ode": reach_ode,
            "front_time": [rows[i]["sampler"] for i in sorted((i for i, f in enumerate(front_t) if f),
                                                              key=lambda i: rows[i]["seconds"])],
            "front_nfe": [rows[i]["sampler"] for i in sorted((i for i, f in enumerate(front_n) if f),
                                                             key=lambda i: rows[i]["nfe_per_sample"])],
            "front_time_not_resolved": unresolved_t, "front_nfe_not_resolved": unresolved_n,
            "on_front_time": front_t, "on_front_nfe": front_n, "vs_reference": vs_ref, "reach": reach,
            "peers": peers, "best_at_budget": best_at, "lead": lead}


def _g(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _ci(v, iv, digits=4):
    """'v [lo, hi]' (or 'v' without an interval)."""
    if iv and _finite(iv[0]) and _finite(iv[1]):
        return f"{_g(v, digits)} [{_g(iv[0], 3)}, {_g(iv[1], 3)}]"
    return _g(v, digits)


def _grid_text(row) -> str:
    g = row.get("grid")
    if not g:
        return "adaptive" if row.get("adaptive") else ("peer's own" if row.get("peer") else "–")
    times = [f"{t:.3g}" for t in g]
    body = " ".join(times) if len(times) <= 7 else " ".join(times[:4] + ["…"] + times[-2:])
    return f"{row.get('schedule') or ''}: {body}"


def _reach_table(reach, primary) -> list:
    out = [f"| sampler | library | NFE | NFE/sample | tol | {primary} [interval] | m - 1.1 m_target [interval] | "
           "seconds | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for e in reach:
        t = e.get("test") or {}
        tcell = _ci(t.get("diff"), [t.get("lo"), t.get("hi")], 3) if t else ""
        if e["reached"]:
            out.append(f"| {e['sampler']} | {e['library']} | {_g(e['nfe'])} | {_g(e['nfe_per_sample'])} | "
                       f"{_g(e['tolerance'])} | {_ci(e['metric'], e.get('interval'))} | {tcell} | {e['seconds']:.3g} | "
                       f"{_g(e['speedup'], 3)}x |")
        elif e["status"] == "not within":
            out.append(f"| {e['sampler']} | {e['library']} | not within at <= {_g(e['max_nfe_per_sample'])} "
                       f"NFE/sample (best {primary} {_g(e['best_metric'])}) | | | | | | |")
        else:
            out.append(f"| {e['sampler']} | {e['library']} | {e['status']} (first: {e['row']}) | | | | {tcell} | | "
                       f"{_g(e.get('speedup'), 3) + 'x?' if e.get('speedup') else ''} |")
    return out + [""]


def markdown(results: dict) -> str:
    meta, rows, a = results["meta"], results["rows"], results["analysis"]
    q = meta["quality"]
    primary = q["primary"]
    others = [k for k in q["metrics"] if k != primary]
    mixture = q.get("kind") == "mixture"
    boot = meta.get("bootstrap") or {}
    out = [f"# Sampler benchmark: {meta['problem']}", "",
           f"- command: `{meta['command']}`",
           f"- {meta['n']} samples, seed {meta['seed']}, batch {meta['batch_size']}, "
           f"{meta['world_size']} process(es); same x_T for every row (sha1 {rows[0]['x_T_sha1'] if rows else '–'})",
           f"- device: {meta['device']} — {meta['device_name']}; python {meta['python']}, torch {meta['torch']}, "
           f"sdesolve {meta['sdesolve']}" + (f"; load average {meta['load_average']}" if "load_average" in meta else ""),
           f"- process: {meta['process']}",
           "- metrics: " + "; ".join(q.get("labels", {}).get(k, k) for k in q["metrics"]),
           (f"- intervals: {boot.get('level', 0.95):.0%} paired bootstrap (percentile, re-centred on the estimate), {boot.get('replicates')} "
            "resamples of the sample indices shared by all rows; a difference whose interval contains 0 is "
            f"'{NOT_RESOLVED}'" if a.get("intervals") else "- intervals: none (no bootstrap): point estimates decide"),
           f"- timing: warm-up on {meta.get('warmup')} samples, then {meta.get('repeats', 1)}+ timed batches of "
           f"{meta.get('timed_batch', meta['batch_size'])} samples per row; seconds = median time per sample x n "
           "[fastest, slowest repeat]",
           f"- benchmark wall time: {results['bench_seconds']:.1f} s"
           + (f", of which metrics and their intervals {meta['metric_seconds']:.1f} s" if "metric_seconds" in meta
              else ""), ""]
    fl = results.get("floor") or {}
    if fl:
        parts = [f"{k} {_g(v)}" + (f" ± {_g(fl[k + '_std'], 2)}" if fl.get(k + "_std") else "")
                 for k, v in fl.items() if k in q["metrics"]]
        kind = fl.get("kind") or ("exact samples" if mixture else "real training images")
        what = f"{fl.get('sets', 1)} sets of {fl['n']} {kind}" if fl.get("sets", 1) > 1 else f"{fl['n']} {kind}"
        out += [f"Floor ({what}): " + ", ".join(parts), ""]
    head = ["sampler", "library", "NFE budget", "NFE (stats.nfe)", "NFE/sample", "steps/tol", "seconds [range]",
            f"{primary} [interval]", f"Δ{primary} vs reference [interval]"] + others + \
        (["proportions"] if mixture and any(r["metrics"].get("proportions") for r in rows) else []) + \
        ["front (time, NFE)", "time grid"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        mark = ("T" if a["on_front_time"][i] else "") + ("N" if a["on_front_nfe"][i] else "")
        name = f"**{r['sampler']}** (reference)" if r["reference"] else r["sampler"]
        iv = r.get("intervals", {})
        vr = a["vs_reference"][i].get(primary) if a.get("vs_reference") else None
        dcell = (f"{_ci(vr['diff'], [vr['lo'], vr['hi']], 3)} {vr['status']}" if vr else "")
        secs = (f"{r['seconds']:.3g} [{r['seconds_lo']:.3g}, {r['seconds_hi']:.3g}]"
                if _finite(r.get("seconds_lo")) else _g(r.get("seconds"), 3))
        cells = [name, r["library"], _g(r["nfe_requested"]), _g(r["nfe"]), _g(r["nfe_per_sample"]),
                 _g(r["steps"]) if not r["adaptive"] else _g(r["tolerance"]), secs,
                 _ci(r["metrics"].get(primary), iv.get(primary)) + (" (failed)" if r["error"] else "")]
        cells.append(dcell)
        cells += [_ci(r["metrics"].get(k), iv.get(k), 3) for k in others]
        if "proportions" in head:
            cells.append(" ".join(f"{p:.3f}" for p in r["metrics"].get("proportions", [])))
        cells += [mark or "", _grid_text(r)]
        out.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["error"]]
    if errors:
        out += ["", "Failed rows:", ""] + [f"- {r['sampler']}: {r['error']}" for r in errors]
    if results.get("skipped"):
        out += ["", "Skipped peers:", ""] + [f"- {s['sampler']}: {s['reason']}" for s in results["skipped"]]

    out += ["", "NFE budget: what was asked; NFE: model calls of a batch (``stats.nfe``; mean over batches for "
            "adaptive rows); NFE/sample: model evaluations per sample (adaptive solvers evaluate only unfinished "
            "samples). Front: T = on the Pareto front of metric against wall time, N = against NFE/sample, counting "
            "only resolved differences.", ""]
    if a["reference"] is not None:
        out += [f"## NFE to get within {a['within']:.0%} of the reference", "",
                f"Reference: {a['reference']}, {primary} = {_ci(a['reference_metric'], a.get('reference_interval'))} "
                f"in {_g(a['reference_seconds'], 3)} s. A row counts when the interval of {primary} - "
                f"{1 + a['within']:g} x reference lies below 0 and its speed-up is resolved by the timing repeats."
                if a["reference_metric"] is not None else f"Reference: {a['reference']} (failed)", ""]
        out += _reach_table(a["reach"], primary)
    if a.get("ode_reference") is not None:
        out += [f"## NFE to get within {a['within']:.0%} of the probability-flow ODE's limit", "",
                "The deterministic samplers integrate the probability-flow ODE from the same x_T, so they converge "
                "to one set of samples, whose metric differs from the reverse SDE's wherever the model's score is "
                f"inexact. Its estimate: {a['ode_reference']}, {primary} = "
                f"{_ci(a['ode_reference_metric'], a.get('ode_reference_interval'))} in "
                f"{_g(a['ode_reference_seconds'], 3)} s.", ""]
        out += _reach_table(a["reach_ode"], primary)
    out += ["## Pareto fronts (resolved differences only)", "",
            "Wall time: " + (" → ".join(a["front_time"]) or "–"), ""]
    if a.get("front_time_not_resolved"):
        out += [f"On the point-estimate front but {NOT_RESOLVED}: " + ", ".join(a["front_time_not_resolved"]), ""]
    out += ["NFE/sample: " + (" → ".join(a["front_nfe"]) or "–"), ""]
    if a.get("front_nfe_not_resolved"):
        out += [f"On the point-estimate front but {NOT_RESOLVED}: " + ", ".join(a["front_nfe_not_resolved"]), ""]
    if a["peers"]:
        out += ["## Peers beside their sdesolve counterparts", "",
                f"| peer | NFE | {primary} | seconds | sdesolve counterpart | NFE | {primary} | seconds | "
                f"{primary} ratio | paired difference (peer - ours) | time ratio | on front (time, NFE) |", "|" + "---|" * 12]
        for p in a["peers"]:
            front = ("T" if p["front_time"] else "") + ("N" if p["front_nfe"] else "")
            if "ours" in p:
                d = p.get("difference")
                dcell = f"{_ci(d['diff'], [d['lo'], d['hi']], 3)} {_peer_status(p['status'])}" if d else "–"
                out.append(f"| {p['sampler']} | {_g(p['nfe'])} | {_ci(p['metric'], p.get('interval'))} | "
                           f"{p['seconds']:.3g} | {p['ours']} | {_g(p['ours_nfe'])} | {_g(p['ours_metric'])} | "
                           f"{p['ours_seconds']:.3g} | {_g(p['metric_ratio'], 3)} | {dcell} | {_g(p['time_ratio'], 3)} | "
                           f"{front} |")
            else:
                out.append(f"| {p['sampler']} | {_g(p['nfe'])} | {_ci(p['metric'], p.get('interval'))} | "
                           f"{p['seconds']:.3g} | {p['counterpart'] or '–'} (not run) | | | | | | | {front} |")
        out.append("")
    out += ["## Summary", "", summary(results)]
    return "\n".join(out) + "\n"


def summary(results: dict) -> str:
    """A few lines a reader can quote: the best row at each NFE budget with its interval (and
    the rows not resolved from it), the lead at each budget (sdesolve's best row on a default grid,
    and on an optimized grid, against the best peer row: paired difference, its interval and the
    reduction of the excess over the floor, 1 - (ours - floor) / (peer - floor)), the reference,
    the ODE limit, and where the peers stand."""
    meta, a = results["meta"], results["analysis"]
    primary = a["primary"]
    lvl = f"{a.get('level', 0.95):.0%} paired interval" if a.get("intervals") else "no intervals"
    lines = [f"{meta['problem']}: {meta['n']} samples per row, {primary} ({lvl}; lower is better)."]
    fl = results.get("floor") or {}
    if _finite(fl.get(primary)):
        lines.append(f"- floor ({fl['n']} {fl.get('kind', 'real/exact samples')}): {_g(fl[primary])}"
                     + (f" ± {_g(fl[primary + '_std'], 2)}" if fl.get(primary + "_std") else ""))
    if a.get("reference_metric") is not None:
        lines.append(f"- reference {a['reference']}: {_ci(a['reference_metric'], a.get('reference_interval'))} "
                     f"in {_g(a['reference_seconds'], 3)} s")
    if a.get("ode_reference_metric") is not None:
        lines.append(f"- probability-flow ODE limit ({a['ode_reference']}): "
                     f"{_ci(a['ode_reference_metric'], a.get('ode_reference_interval'))}")
    for b in a.get("best_at_budget", []):
        ties = b["not_resolved_from"]
        tie = (f"; not resolved from {', '.join(ties)}" if ties else "; resolved better than the other "
               f"{b['candidates'] - 1}" if b["candidates"] > 1 else "")
        lines.append(f"- best at {b['budget']} NFE: {b['best']} ({b['library']}) {_ci(b['metric'], b['interval'])}"
                     + tie)
    for e in a.get("lead", []):
        c = e["difference"] or {}
        iv = f" [{_g(c.get('lo'), 3)}, {_g(c.get('hi'), 3)}]" if c.get("lo") is not None else ""
        red = f", {100 * e['excess_reduction']:.0f}% less excess over the floor" if e["excess_reduction"] is not None else ""
        lines.append(f"- lead at {e['budget']} NFE ({e['kind']}): {e['ours']} {_g(e['ours_metric'])} vs best peer "
                     f"{e['peer']} {_g(e['peer_metric'])}: difference {_g(c.get('diff'), 3)}{iv}, {e['status']}{red}")
    reached = [e for e in a.get("reach", []) if e["reached"]]
    if reached:
        e = min(reached, key=lambda e: e["nfe_per_sample"])
        lines.append(f"- fewest NFE within {a['within']:.0%} of the reference (resolved): {e['row']} "
                     f"({_g(e['nfe_per_sample'])} NFE/sample, {_g(e['speedup'], 3)}x faster)")
    elif a.get("reach"):
        lines.append(f"- no sampler is resolved within {a['within']:.0%} of the reference with a resolved speed-up "
                     "at this n")
    for p in a.get("peers", []):
        if "ours" in p:
            lines.append(f"- peer {p['sampler']}: {_ci(p['metric'], p.get('interval'))} vs {p['ours']} "
                         f"{_g(p['ours_metric'])}: {_peer_status(p['status'])}; time ratio {_g(p['time_ratio'], 3)}")
        else:
            lines.append(f"- peer {p['sampler']}: {_ci(p['metric'], p.get('interval'))} (no sdesolve counterpart run)")
    for s in results.get("skipped", []):
        lines.append(f"- peer {s['sampler']}: skipped ({s['reason']})")
    return "\n".join(lines) + "\n"


def _peer_status(status) -> str:
    """A peer's status (the peer against its counterpart: peer - ours) in words that name the peer."""
    return f"the peer is {status}" if status in ("better", "worse") else str(status)


def _bars(rows, idx, primary, ms):
    """Asymmetric error bars (2, k) from the rows' intervals of the primary metric (None if none)."""
    lo, hi, any_ = [], [], False
    for i in idx:
        iv = rows[i].get("intervals", {}).get(primary)
        if iv and _finite(iv[0]) and _finite(iv[1]):
            lo.append(max(ms[i] - iv[0], 0.0))
            hi.append(max(iv[1] - ms[i], 0.0))
            any_ = True
        else:
            lo.append(0.0)
            hi.append(0.0)
    return [lo, hi] if any_ else None


def _bars_time(rows, idx):
    lo, hi, any_ = [], [], False
    for i in idx:
        r = rows[i]
        if _finite(r.get("seconds_lo")) and _finite(r.get("seconds_hi")):
            lo.append(max(r["seconds"] - r["seconds_lo"], 0.0))
            hi.append(max(r["seconds_hi"] - r["seconds"], 0.0))
            any_ = True
        else:
            lo.append(0.0)
            hi.append(0.0)
    return [lo, hi] if any_ else None


def plot(results: dict, path) -> Path:
    """Write the two-panel Pareto plot (matplotlib, Agg backend) to ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows, a = results["rows"], results["analysis"]
    primary = a["primary"]
    ms = [_metric(r, primary) for r in rows]
    fams = {}
    for i, r in enumerate(rows):
        if ms[i] is not None and not r["reference"]:
            fams.setdefault((r["peer"], r["family"]), []).append(i)
    ours = [k for k in fams if not k[0]]
    theirs = [k for k in fams if k[0]]
    # tab20's dark shades first, then its light ones: 20 distinct colours for sdesolve's samplers
    tab20, cmap_peer = plt.get_cmap("tab20"), plt.get_cmap("Dark2")
    colors = {k: tab20((2 * j) % 20 + (j // 10) % 2) for j, k in enumerate(ours)}
    colors.update({k: cmap_peer(j % 8) for j, k in enumerate(theirs)})

    fig, axes = plt.subplots(1, 2, figsize=(17, 6.4), sharey=True)
    for ax, key, front, xlabel in ((axes[0], "seconds", a["on_front_time"], "wall time (s)"),
                                   (axes[1], "nfe_per_sample", a["on_front_nfe"], "model evaluations per sample")):
        for k, idx in fams.items():
            idx = sorted(idx, key=lambda i: rows[i]["nfe_per_sample"])
            xs, ys = [rows[i][key] for i in idx], [ms[i] for i in idx]
            peer = k[0]
            ax.plot(xs, ys, ls="--" if peer else "-", marker="D" if peer else "o", ms=6 if peer else 5,
                    color=colors[k], lw=1.2, label=(f"{k[1]}" if peer else k[1]) if ax is axes[0] else None,
                    mfc="white" if peer else colors[k])
            yerr, xerr = _bars(rows, idx, primary, ms), _bars_time(rows, idx) if key == "seconds" else None
            if yerr is not None or xerr is not None:
                ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, ls="none", color=colors[k], lw=0.9, capsize=2)
        for i, r in enumerate(rows):
            if r["reference"] and ms[i] is not None:
                yerr = _bars(rows, [i], primary, ms)
                if yerr is not None:
                    ax.errorbar([r[key]], [ms[i]], yerr=yerr, ls="none", color="black", lw=0.9, capsize=2)
                ax.plot([r[key]], [ms[i]], marker="*", ms=16, color="gold", mec="black", ls="none",
                        label=f"reference: {r['sampler']}" if ax is axes[0] else None, zorder=5)
        pts = sorted((rows[i][key], ms[i]) for i, f in enumerate(front) if f)
        if pts:
            xs, ys = zip(*pts)
            ax.step(xs, ys, where="post", color="black", lw=1.0, alpha=0.7, zorder=4,
                    label="Pareto front" if ax is axes[0] else None)
            ax.plot(xs, ys, ls="none", marker="o", ms=11, mfc="none", mec="black", mew=1.3, zorder=6)
        if a["reference_metric"] is not None:
            ax.axhline(a["reference_metric"], color="goldenrod", ls=":", lw=1)
            ax.axhline((1 + a["within"]) * a["reference_metric"], color="goldenrod", ls="--", lw=0.8,
                       label=f"reference + {a['within']:.0%}" if ax is axes[0] else None)
        if a.get("ode_reference_metric") is not None:
            ax.axhline(a["ode_reference_metric"], color="teal", ls=":", lw=1,
                       label=f"PF-ODE limit ({a['ode_reference']})" if ax is axes[0] else None)
        fl = results.get("floor") or {}
        if _finite(fl.get(primary)) and fl[primary] > 0:
            ax.axhline(fl[primary], color="gray", ls=":", lw=1.2, label="floor (real/exact data)" if ax is axes[0] else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel(results["meta"]["quality"]["label"] + (
        f"\nerror bars: {results['analysis'].get('level', 0.95):.0%} paired bootstrap; timing repeats' range"
        if results["analysis"].get("intervals") else ""), fontsize=8)
    fig.suptitle(f"{results['meta']['problem']}: {results['meta']['n']} samples, {results['meta']['device_name']}",
                 fontsize=10)
    return finish_figure(fig, axes, path)


def finish_figure(fig, axes, path) -> Path:
    """The legend (sdesolve circles, peer diamonds) beside the panels, then save and close."""
    import matplotlib.pyplot as plt

    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize=8, frameon=False,
               title="circles: sdesolve, diamonds: peers", title_fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.8, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain(obj):
    """JSON-ready: non-finite floats become null, tuples lists, anything else its string."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def write(results: dict, out) -> dict:
    """Add the analysis to ``results`` and write results.json, results.md, summary.md and pareto.png into
    the directory ``out``; returns their paths (the plot's is None without matplotlib)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["analysis"] = analyse(results)
    replicates = results.pop("_replicates", None)
    paths = {"json": out / "results.json", "md": out / "results.md", "summary": out / "summary.md",
             "png": out / "pareto.png"}
    from ..fileio import atomic_write
    for key, text in (("json", json.dumps(_plain(results), indent=1, allow_nan=False)), ("md", markdown(results)),
                      ("summary", summary(results))):
        atomic_write(paths[key], lambda tmp, text=text: Path(tmp).write_text(text))
    if replicates is not None:
        results["_replicates"] = replicates
    try:
        atomic_write(paths["png"], lambda tmp: plot(results, tmp))
    except ImportError as e:  # the table and the record do not need matplotlib
        print(f"no plot: {e} (install matplotlib, the [plots] extra)")
        paths["png"] = None
    return paths
