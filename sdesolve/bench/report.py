"""What a benchmark run writes: ``results.json``, ``results.md`` and ``pareto.png``.

The analysis (:func:`analyse`), computed from the rows alone:

* Pareto fronts: a row is on the front of (cost, metric) when no other row has both a lower or
  equal cost and a lower or equal metric, one of them strictly lower; costs are the wall time
  and the model evaluations per sample. Rows that failed or have a non-finite metric are not
  candidates.
* Within 10% of the reference: for each sampler (its rows ordered by evaluations per sample),
  the first row whose primary metric is at most (1 + 0.1) times the reference row's (e.g. 1000
  Euler-Maruyama steps), with its cost and its speed-up over the reference. The same for the
  deterministic samplers against the probability-flow ODE's limit, estimated by sdesolve's
  adaptive ODE row at the tightest tolerance (all deterministic samplers from one x_T converge to
  that one set of samples, whose metric differs from the reverse SDE's where the score is inexact).
* Peers: each peer row beside the sdesolve row of its counterpart at the same budget or
  tolerance, the ratios of their metrics and wall times, and whether it is on a front.

The plot has two panels, metric against wall time and against evaluations per sample, both
log-log; sdesolve samplers are circles joined by solid lines, peers diamonds joined by dashed
lines, the reference a star, the fronts a black staircase with ringed points; dotted lines mark
the reference metric, 1.1 times it, the probability-flow ODE's limit and the floor (real or exact
data of the same size).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["pareto_front", "analyse", "markdown", "plot", "write"]

WITHIN = 0.10


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


def _metric(row, primary):
    if row.get("error"):
        return None
    v = row["metrics"].get(primary)
    return v if _finite(v) else None


def analyse(results: dict, within: float = WITHIN) -> dict:
    rows, primary = results["rows"], results["meta"]["quality"]["primary"]
    ms = [_metric(r, primary) for r in rows]
    front_t = pareto_front([(r["seconds"], m) for r, m in zip(rows, ms)])
    front_n = pareto_front([(r["nfe_per_sample"], m) for r, m in zip(rows, ms)])
    ref_i = next((i for i, r in enumerate(rows) if r["reference"]), None)
    ref = rows[ref_i] if ref_i is not None else None
    ref_m = ms[ref_i] if ref_i is not None else None

    def reach_of(target_i, keep):
        """Per sampler family (rows kept by ``keep``, without the target row itself): its first
        row, by evaluations per sample, within ``within`` of the target row's metric."""
        target, target_m = rows[target_i], ms[target_i]
        fams = {}
        for i, r in enumerate(rows):
            if i != target_i and keep(r):
                fams.setdefault(r["family"], []).append(i)
        out = []
        for fam, idx in fams.items():
            idx = sorted(idx, key=lambda i: rows[i]["nfe_per_sample"])
            hit = next((i for i in idx if ms[i] is not None and ms[i] <= (1.0 + within) * target_m), None)
            entry = {"sampler": fam, "library": rows[idx[0]]["library"], "peer": rows[idx[0]]["peer"],
                     "adaptive": rows[idx[0]]["adaptive"]}
            if hit is None:
                best = min((i for i in idx if ms[i] is not None), key=lambda i: ms[i], default=None)
                entry.update(reached=False, max_nfe_per_sample=max(rows[i]["nfe_per_sample"] for i in idx),
                             best_metric=ms[best] if best is not None else None)
            else:
                r = rows[hit]
                entry.update(reached=True, row=r["sampler"], nfe=r["nfe"], nfe_per_sample=r["nfe_per_sample"],
                             tolerance=r["tolerance"], metric=ms[hit], seconds=r["seconds"],
                             speedup=target["seconds"] / r["seconds"] if r["seconds"] else None)
            out.append(entry)
        return out

    reach = reach_of(ref_i, lambda r: True) if ref_m is not None else []
    # the probability-flow ODE's own limit: deterministic samplers from one x_T converge to one set
    # of samples, estimated by sdesolve's adaptive ODE row at the tightest tolerance
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
        p = {"sampler": r["sampler"], "nfe": r["nfe"], "metric": ms[i], "seconds": r["seconds"],
             "front_time": front_t[i], "front_nfe": front_n[i], "counterpart": r["counterpart"] or None}
        if j is not None:
            p.update(ours=rows[j]["sampler"], ours_nfe=rows[j]["nfe"], ours_metric=ms[j], ours_seconds=rows[j]["seconds"],
                     metric_ratio=ms[i] / ms[j] if ms[i] is not None and ms[j] else None,
                     time_ratio=r["seconds"] / rows[j]["seconds"] if rows[j]["seconds"] else None)
        peers.append(p)
    return {"primary": primary, "within": within, "reference": ref["sampler"] if ref else None,
            "reference_metric": ref_m, "reference_seconds": ref["seconds"] if ref else None,
            "ode_reference": rows[ode_i]["sampler"] if ode_i is not None else None,
            "ode_reference_metric": ms[ode_i] if ode_i is not None else None,
            "ode_reference_seconds": rows[ode_i]["seconds"] if ode_i is not None else None, "reach_ode": reach_ode,
            "front_time": [rows[i]["sampler"] for i in sorted((i for i, f in enumerate(front_t) if f),
                                                              key=lambda i: rows[i]["seconds"])],
            "front_nfe": [rows[i]["sampler"] for i in sorted((i for i, f in enumerate(front_n) if f),
                                                             key=lambda i: rows[i]["nfe_per_sample"])],
            "on_front_time": front_t, "on_front_nfe": front_n, "reach": reach, "peers": peers}


def _g(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.{digits}g}"
    return str(v)


def _reach_table(reach, primary) -> list:
    out = [f"| sampler | library | NFE | NFE/sample | tol | {primary} | seconds | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
    for e in reach:
        if e["reached"]:
            out.append(f"| {e['sampler']} | {e['library']} | {_g(e['nfe'])} | {_g(e['nfe_per_sample'])} | "
                       f"{_g(e['tolerance'])} | {_g(e['metric'])} | {e['seconds']:.3g} | {_g(e['speedup'], 3)}x |")
        else:
            out.append(f"| {e['sampler']} | {e['library']} | not within at <= {_g(e['max_nfe_per_sample'])} "
                       f"NFE/sample (best {primary} {_g(e['best_metric'])}) | | | | | |")
    return out + [""]


def markdown(results: dict) -> str:
    meta, rows, a = results["meta"], results["rows"], results["analysis"]
    q = meta["quality"]
    primary = q["primary"]
    others = [k for k in q["metrics"] if k != primary]
    mixture = q["kind"] == "mixture"
    out = [f"# Sampler benchmark: {meta['problem']}", "",
           f"- command: `{meta['command']}`",
           f"- {meta['n']} samples, seed {meta['seed']}, batch {meta['batch_size']}, "
           f"{meta['world_size']} process(es); same x_T for every row (sha1 {rows[0]['x_T_sha1'] if rows else '–'})",
           f"- device: {meta['device']} — {meta['device_name']}; python {meta['python']}, torch {meta['torch']}, "
           f"sdesolve {meta['sdesolve']}" + (f"; load average {meta['load_average']}" if "load_average" in meta else ""),
           f"- process: {meta['process']}",
           f"- metric: {q['label']}",
           f"- benchmark wall time: {results['bench_seconds']:.1f} s", ""]
    fl = results.get("floor") or {}
    if fl:
        parts = [f"{k} {_g(v)}" + (f" ± {_g(fl[k + '_std'], 2)}" if k + "_std" in fl else "")
                 for k, v in fl.items() if k in q["metrics"]]
        kind = "exact samples" if mixture else "real training images"
        what = f"{fl.get('sets', 1)} sets of {fl['n']} {kind}" if fl.get("sets", 1) > 1 else f"{fl['n']} {kind}"
        out += [f"Floor ({what}): " + ", ".join(parts), ""]
    head = ["sampler", "library", "NFE budget", "NFE (stats.nfe)", "NFE/sample", "steps/tol", "seconds",
            "samples/s", primary] + others + (["proportions"] if mixture else []) + ["front (time, NFE)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        mark = ("T" if a["on_front_time"][i] else "") + ("N" if a["on_front_nfe"][i] else "")
        name = f"**{r['sampler']}** (reference)" if r["reference"] else r["sampler"]
        cells = [name, r["library"], _g(r["nfe_requested"]), _g(r["nfe"]), _g(r["nfe_per_sample"]),
                 _g(r["steps"]) if not r["adaptive"] else _g(r["tolerance"]), f"{r['seconds']:.3g}",
                 _g(r["samples_per_s"], 3), _g(r["metrics"].get(primary)) + (" (failed)" if r["error"] else "")]
        cells += [_g(r["metrics"].get(k)) for k in others]
        if mixture:
            cells.append(" ".join(f"{p:.3f}" for p in r["metrics"].get("proportions", [])))
        cells.append(mark or "")
        out.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["error"]]
    if errors:
        out += ["", "Failed rows:", ""] + [f"- {r['sampler']}: {r['error']}" for r in errors]
    if results.get("skipped"):
        out += ["", "Skipped peers:", ""] + [f"- {s['sampler']}: {s['reason']}" for s in results["skipped"]]

    out += ["", "NFE budget: what was asked; NFE: model calls of a batch (``stats.nfe``; mean over batches for "
            "adaptive rows); NFE/sample: model evaluations per sample (adaptive solvers evaluate only unfinished "
            "samples). Front: T = on the Pareto front of metric against wall time, N = against NFE/sample.", ""]
    if a["reference"] is not None:
        out += [f"## NFE to get within {a['within']:.0%} of the reference", "",
                f"Reference: {a['reference']}, {primary} = {_g(a['reference_metric'])} in "
                f"{_g(a['reference_seconds'], 3)} s; target {primary} <= {_g((1 + a['within']) * a['reference_metric'])}"
                if a["reference_metric"] is not None else f"Reference: {a['reference']} (failed)", ""]
        out += _reach_table(a["reach"], primary)
    if a.get("ode_reference") is not None:
        out += [f"## NFE to get within {a['within']:.0%} of the probability-flow ODE's limit", "",
                "The deterministic samplers integrate the probability-flow ODE from the same x_T, so they converge "
                "to one set of samples, whose metric differs from the reverse SDE's wherever the model's score is "
                f"inexact. Its estimate: {a['ode_reference']}, {primary} = {_g(a['ode_reference_metric'])} in "
                f"{_g(a['ode_reference_seconds'], 3)} s; target {primary} <= "
                f"{_g((1 + a['within']) * a['ode_reference_metric'])}.", ""]
        out += _reach_table(a["reach_ode"], primary)
    out += ["## Pareto fronts", "", "Wall time: " + (" → ".join(a["front_time"]) or "–"), "",
            "NFE/sample: " + (" → ".join(a["front_nfe"]) or "–"), ""]
    if a["peers"]:
        out += ["## Peers beside their sdesolve counterparts", "",
                f"| peer | NFE | {primary} | seconds | sdesolve counterpart | NFE | {primary} | seconds | "
                f"{primary} ratio | time ratio | on front (time, NFE) |", "|" + "---|" * 11]
        for p in a["peers"]:
            front = ("T" if p["front_time"] else "") + ("N" if p["front_nfe"] else "")
            if "ours" in p:
                out.append(f"| {p['sampler']} | {_g(p['nfe'])} | {_g(p['metric'])} | {p['seconds']:.3g} | {p['ours']} | "
                           f"{_g(p['ours_nfe'])} | {_g(p['ours_metric'])} | {p['ours_seconds']:.3g} | "
                           f"{_g(p['metric_ratio'], 3)} | {_g(p['time_ratio'], 3)} | {front} |")
            else:
                out.append(f"| {p['sampler']} | {_g(p['nfe'])} | {_g(p['metric'])} | {p['seconds']:.3g} | "
                           f"{p['counterpart'] or '–'} (not run) | | | | | | {front} |")
        out.append("")
    return "\n".join(out) + "\n"


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
        for i, r in enumerate(rows):
            if r["reference"] and ms[i] is not None:
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
    axes[0].set_ylabel(results["meta"]["quality"]["label"])
    fig.suptitle(f"{results['meta']['problem']}: {results['meta']['n']} samples, {results['meta']['device_name']}",
                 fontsize=10)
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
    """Add the analysis to ``results`` and write results.json, results.md and pareto.png into
    the directory ``out``; returns their paths (the plot's is None without matplotlib)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["analysis"] = analyse(results)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "pareto.png"}
    from ..fileio import atomic_write
    record, table = json.dumps(_plain(results), indent=1, allow_nan=False), markdown(results)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(record))
    atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(table))
    try:
        atomic_write(paths["png"], lambda tmp: plot(results, tmp))
    except ImportError as e:  # the table and the record do not need matplotlib
        print(f"no plot: {e} (install matplotlib, the [plots] extra)")
        paths["png"] = None
    return paths
