"""The sampling loop against hand-written torch loops doing the same arithmetic, in one run.

    python benchmarks/bench_loop.py [--quick] [--reps 7] [--out benchmarks/results]

writes ``loop_cpu.json`` and ``loop_cpu.md``. One torch thread. Every row of a problem runs once
per repetition, the rows interleaved (row order rotated each repetition), so a change of load
hits all rows alike; a row's time is the median over repetitions (spread: min..max), and a ratio
``ours / hand`` is the median of the per-repetition ratios (paired, same repetition).

Problems (both VP SDE, beta in [0.1, 20], T = 1, t_min = 1e-3, float32 states, 200 steps):

``mixture``  batch 4096, d = 2, the exact score of a 3-component 2-D Gaussian mixture
             (:class:`sdesolve.GaussianMixture`, computed in float64);
``mlp``      batch 256, d = 64, a 3-layer tanh MLP score (65 -> 256 -> 256 -> 64, fixed weights).

Rows (every hand loop calls the same score function and uses the solver's time grid):

* ``Euler`` (probability-flow ODE, uniform grid) vs a hand loop ``x += h (f x - g^2 s / 2)``;
* ``DPMSolverPP(order=2)`` (log-SNR grid) vs a hand DPM-Solver++(2M) loop (Lu et al. 2022b,
  data prediction, first step first order);
* ``EulerMaruyama`` and ``ReverseDiffusion`` (reverse SDE, per-sample Philox noise) vs a hand
  Euler-Maruyama loop drawing ``torch.randn`` (and a hand reverse-diffusion loop with randn);
  torchsde's ``euler`` on the same reverse SDE (time reversed, s = T - t, BrownianInterval).
  The Philox rows run on the path ``SDESOLVE_NOISE`` selects (``--noise``, default
  ``compiled``, warmed up before timing) and once more on the eager path.

Also: Philox normals against ``torch.randn`` per element (eager and compiled (C) paths), and the
adaptive loop's overhead per vector-field call (Dopri5 on the 2-D mixture's PF-ODE, B = 512,
float64, as in ``bench_solvers.py``) next to torchdiffeq's on the same problem.
``--profile`` adds a breakdown of the fixed-step loop's per-step costs (see ``profile_loop``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sdesolve as sds  # noqa: E402
from sdesolve import philox  # noqa: E402
from sdesolve.bench.runner import cpu_name  # noqa: E402

GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
P = sds.VPSDE()


# --- problems -----------------------------------------------------------------------------------
def mixture_score():
    return lambda x, t: GM.score_at(x, t, P)


def mlp_score(d=64, hidden=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(d + 1, hidden, generator=g) / math.sqrt(d + 1)
    W2 = torch.randn(hidden, hidden, generator=g) / math.sqrt(hidden)
    W3 = torch.randn(hidden, d, generator=g) / math.sqrt(hidden)

    def score(x, t):
        h = torch.tanh(torch.cat([x, t.to(x.dtype)[:, None]], 1) @ W1)
        return torch.tanh(h @ W2) @ W3 - x

    return score


def beta(t):
    return P.beta_min + t * (P.beta_max - P.beta_min)


def alpha_sigma_lam(t):
    la = -0.25 * t**2 * (P.beta_max - P.beta_min) - 0.5 * t * P.beta_min
    a = math.exp(la)
    s = math.sqrt(-math.expm1(2 * la))
    return a, s, math.log(a / s)


# --- hand-written loops ------------------------------------------------------------------------
def hand_euler(score, x, ts):
    B = x.shape[0]
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        s = score(x, torch.full((B,), t, dtype=torch.float64))
        x = x + h * (-0.5 * beta(t) * x - 0.5 * beta(t) * s)
    return x


def hand_dpmpp2m(score, x, ts):
    B = x.shape[0]
    pts = [alpha_sigma_lam(t) for t in ts]
    d_prev = None
    for i in range(len(ts) - 1):
        (a0, s0, l0), (a1, s1, l1) = pts[i], pts[i + 1]
        s = score(x, torch.full((B,), ts[i], dtype=torch.float64))
        d0 = (x + s0 * s0 * s) / a0
        h = l1 - l0
        c0 = -a1 * math.expm1(-h)
        y = (s1 / s0) * x + c0 * d0
        if d_prev is not None:
            r = (l0 - pts[i - 1][2]) / h
            y = y + (0.5 * c0 / r) * (d0 - d_prev)
        x, d_prev = y, d0
    return x


def hand_em(score, x, ts):
    B = x.shape[0]
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        s = score(x, torch.full((B,), t, dtype=torch.float64))
        x = x + dt * (-0.5 * beta(t) * x - beta(t) * s) + math.sqrt(beta(t) * -dt) * torch.randn_like(x)
    return x


def hand_reverse_diffusion(score, x, ts):
    B = x.shape[0]
    for i in range(len(ts) - 1):
        t0, t1 = ts[i], ts[i + 1]
        a = alpha_sigma_lam(t0)[0] / alpha_sigma_lam(t1)[0]
        s2 = max(alpha_sigma_lam(t0)[1] ** 2 - a * a * alpha_sigma_lam(t1)[1] ** 2, 0.0)
        s = score(x, torch.full((B,), t0, dtype=torch.float64))
        x = (2.0 - a) * x + s2 * s + math.sqrt(s2) * torch.randn_like(x)
    return x


def torchsde_euler(score, x, steps):
    import torchsde

    span = P.T - P.t_min

    class Reverse(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, s, y):  # dx/ds = -(f x - g^2 score) at t = T - s
            t = P.T - float(s)
            return 0.5 * beta(t) * y + beta(t) * score(y, torch.full((y.shape[0],), t, dtype=torch.float64))

        def g(self, s, y):
            return torch.full_like(y, math.sqrt(beta(P.T - float(s))))

    ts = torch.tensor([0.0, span], dtype=x.dtype)
    return torchsde.sdeint(Reverse(), x, ts, method="euler", dt=span / steps)[-1]


# --- timing ------------------------------------------------------------------------------------
def run_interleaved(rows, reps, cpu=None, mirror=False):
    """rows: name -> callable; returns name -> list of wall seconds (one per repetition). ``cpu``: a
    dict that receives name -> list of this thread's CPU seconds of the same calls (time the
    machine's other work took from the core is in the wall time only). ``mirror``: each repetition
    runs the rows in its order and then in reverse (A B C C B A) and a row's time is the sum of its
    two calls, so that a drift of the machine's speed that is linear over the repetition cancels
    in every ratio of two rows."""
    names = list(rows)
    for name in names:  # warm-up (allocator, caches, compiled kernels)
        rows[name]()
    times = {name: [] for name in names}
    if cpu is not None:
        cpu.update({name: [] for name in names})
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        wall, thread = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        for name in order + (order[::-1] if mirror else []):
            c = time.thread_time()
            t = time.perf_counter()
            rows[name]()
            wall[name] += time.perf_counter() - t
            thread[name] += time.thread_time() - c
        for name in names:
            times[name].append(wall[name] / (2 if mirror else 1))
            if cpu is not None:
                cpu[name].append(thread[name] / (2 if mirror else 1))
    return times


def with_noise(mode, fn):
    def run():
        old = os.environ.get(philox.ENV_VAR)
        os.environ[philox.ENV_VAR] = mode
        try:
            fn()
            return philox.normal_path()
        finally:
            if old is None:
                del os.environ[philox.ENV_VAR]
            else:
                os.environ[philox.ENV_VAR] = old
    return run


def loop_rows(problem, steps, reps, noise_mode):
    if problem == "mixture":
        B, d, score = 4096, 2, mixture_score()
    else:
        B, d, score = 256, 64, mlp_score()
    x_T = P.prior_from_normal(torch.randn(B, d, generator=torch.Generator().manual_seed(1)))
    uni = sds.schedules.uniform(P, steps).tolist()
    lsnr = sds.schedules.logsnr(P, steps).tolist()
    paths = {}

    def ours(solver, mode=None, **kw):
        def run():
            return sds.sample(P, score, solver, x_T=x_T, steps=steps, seed=0, **kw).y
        if mode is None:
            return run
        name = f"{type(solver).__name__} [{mode} noise]"

        def tagged():
            paths[name] = with_noise(mode, run)()
        return tagged

    rows = {
        "hand Euler": lambda: hand_euler(score, x_T, uni),
        "Euler": ours(sds.Euler()),
        "hand DPM-Solver++(2M)": lambda: hand_dpmpp2m(score, x_T, lsnr),
        "DPMSolverPP(order=2)": ours(sds.DPMSolverPP(order=2)),
        "hand EM (torch.randn)": lambda: hand_em(score, x_T, uni),
        f"EulerMaruyama [{noise_mode} noise]": ours(sds.EulerMaruyama(), noise_mode),
        "EulerMaruyama [eager noise]": ours(sds.EulerMaruyama(), "eager"),
        "hand reverse diffusion (torch.randn)": lambda: hand_reverse_diffusion(score, x_T, uni),
        f"ReverseDiffusion [{noise_mode} noise]": ours(sds.ReverseDiffusion(), noise_mode),
        "ReverseDiffusion [eager noise]": ours(sds.ReverseDiffusion(), "eager"),
        "torchsde euler": lambda: torchsde_euler(score, x_T, steps),
    }
    cpu = {}
    times = run_interleaved(rows, reps, cpu, mirror=True)
    pairs = [
        ("Euler", "hand Euler", 1.10),
        ("DPMSolverPP(order=2)", "hand DPM-Solver++(2M)", 1.15),
        (f"EulerMaruyama [{noise_mode} noise]", "hand EM (torch.randn)", 1.15),
        ("EulerMaruyama [eager noise]", "hand EM (torch.randn)", None),
        (f"ReverseDiffusion [{noise_mode} noise]", "hand EM (torch.randn)", 1.15),
        (f"ReverseDiffusion [{noise_mode} noise]", "hand reverse diffusion (torch.randn)", None),
        ("ReverseDiffusion [eager noise]", "hand EM (torch.randn)", None),
        ("hand EM (torch.randn)", "torchsde euler", None),
        (f"EulerMaruyama [{noise_mode} noise]", "torchsde euler", 1.0),
        (f"ReverseDiffusion [{noise_mode} noise]", "torchsde euler", 1.0),
    ]
    seen, unique = set(), []
    for a, b, target in pairs:  # with --noise eager some pairs coincide
        if (a, b) not in seen:
            seen.add((a, b))
            unique.append((a, b, target))
    return rows, (times, cpu), unique, paths, dict(batch=B, dim=d, steps=steps)


def summarize(times, steps):
    out = {}
    for name, ts in times.items():
        out[name] = dict(median_ms_per_step=1e3 * statistics.median(ts) / steps,
                         min_ms_per_step=1e3 * min(ts) / steps, max_ms_per_step=1e3 * max(ts) / steps,
                         seconds=ts)
    return out


def paired_ratio(times, a, b):
    rs = sorted(x / y for x, y in zip(times[a], times[b]))
    return statistics.median(rs), rs[0], rs[-1]


# --- Philox against torch.randn ------------------------------------------------------------------
def philox_rows(reps, sizes):
    """Single calls alternated between the rows (order rotated), many of them: on a loaded machine a
    preempted call is an outlier that the median drops, and neighbours in time see the same load."""
    from sdesolve.noise import streams

    compiled = philox.compile_normals()
    res = []
    for B, n in sizes:
        s, st = streams(0, B), torch.full((B,), 7, dtype=torch.int64)
        rows = {"torch.randn": lambda: torch.randn(B, n), "philox eager": lambda: philox.normal_eager(s, st, 3, n)}
        if compiled:
            rows["philox compiled"] = lambda: philox._runner()(s, st, 3, n)
        names = list(rows)
        for f in rows.values():
            f()
        calls = reps * (40 if B * n < 1e5 else 4)
        times = {k: [] for k in names}
        for c in range(calls):
            for name in names[c % len(names):] + names[:c % len(names)]:
                t = time.perf_counter()
                rows[name]()
                times[name].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        res.append(dict(batch=B, n=n, calls=calls,
                        us_per_call={k: 1e6 * v for k, v in med.items()},
                        ns_per_element={k: 1e9 * v / (B * n) for k, v in med.items()},
                        ratio_to_randn={k: med[k] / med["torch.randn"] for k in names if k != "torch.randn"}))
    return res


# --- adaptive loop overhead -----------------------------------------------------------------------
class Timed:
    def __init__(self, fn):
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, t, x):
        t0 = time.perf_counter()
        out = self.fn(t, x)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def adaptive_rows(reps, B=512):
    import torchdiffeq

    pf = P.probability_flow(GM.score(P))
    y0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = []
    for tol in (1e-3, 1e-5):
        rec = {"sdesolve": [], "torchdiffeq": []}

        def ours():
            f = Timed(lambda t, x: pf.drift(t, x))
            t0 = time.perf_counter()
            sds.solve(sds.ODE(f), y0, P.T, P.t_min, sds.Dopri5(tol, tol))
            rec["sdesolve"].append((time.perf_counter() - t0 - f.seconds) / f.calls)

        def peer():
            f = Timed(lambda t, x: pf.drift(t.to(torch.float64).expand(x.shape[0]), x))
            t0 = time.perf_counter()
            torchdiffeq.odeint(f, y0, torch.tensor([P.T, P.t_min], dtype=torch.float64), method="dopri5",
                               rtol=tol, atol=tol, options=dict(step_t=torch.tensor([P.t_min], dtype=torch.float64)))
            rec["torchdiffeq"].append((time.perf_counter() - t0 - f.seconds) / f.calls)

        run_interleaved({"sdesolve": ours, "torchdiffeq": peer}, reps)
        res.append(dict(case=f"VP PF-ODE, 2-D mixture, B={B}, float64: dopri5 rtol=atol={tol:g}",
                        overhead_per_nfe_us={k: 1e6 * statistics.median(v[1:]) for k, v in rec.items()},
                        ratio=statistics.median(a / b for a, b in zip(rec["sdesolve"][1:], rec["torchdiffeq"][1:]))))
    return res


# --- per-step profile of the fixed-step loop ---------------------------------------------------
def profile_loop(reps, B=4096, d=2, steps=200):
    """Costs per step of the pieces of ``solve``'s fixed-step loop and of the EM step, each timed
    alone (median over reps of ``steps`` calls) on the mixture problem's shapes."""
    from sdesolve.kernels.em import em_step_ref
    from sdesolve.noise import Noise

    score = mixture_score()
    x = P.prior_from_normal(torch.randn(B, d, generator=torch.Generator().manual_seed(1)))
    grid = sds.schedules.uniform(P, steps)
    noise = Noise.from_seed(0, B)
    eq = P.reverse(GM.score(P))
    t0v, t1v = grid[3].expand(B), grid[4].expand(B)
    drift = eq.drift(t0v, x)
    g = eq.diffusion(t0v, x).reshape(B)  # per sample, as EulerMaruyama passes it
    z = noise.at(3).normal(x)
    first_bad = torch.full((B,), -1, dtype=torch.int64)
    tv = torch.full((B,), 0.5, dtype=torch.float64)

    def finite_check():
        bad = ~torch.isfinite(x.reshape(B, -1)).all(1)
        torch.where(bad & (first_bad < 0), torch.full_like(first_bad, 3), first_bad)

    pieces = {
        "grid[i].expand(B) x2 (tvec)": lambda: (grid[3].expand(B), grid[4].expand(B)),
        "noise.at(i) (Noise + full_like)": lambda: noise.at(3),
        "finite check (isfinite.all + where + full_like)": finite_check,
        "score: GaussianMixture.score_at": lambda: score(x, tv),
        "eq.drift (score + f x - g2 s)": lambda: eq.drift(t0v, x),
        "eq.diffusion": lambda: eq.diffusion(t0v, x),
        "Philox normals (noise.normal)": lambda: noise.at(3).normal(x),
        "torch.randn_like": lambda: torch.randn_like(x),
        "em_step_ref with z (checks + columns + arithmetic)": lambda: em_step_ref(x, drift, g, t1v - t0v, z=z),
        "bare EM arithmetic x + f dt + g sqrt|dt| z": lambda: x + drift * -0.005 + 0.3 * z,
        "EulerMaruyama().step (whole step)": lambda: sds.EulerMaruyama().step(eq, t0v, t1v, x, None, noise.at(3)),
    }

    def timed(fn):
        def run():
            for _ in range(steps):
                fn()
        return run

    times = run_interleaved({k: timed(v) for k, v in pieces.items()}, reps)
    total = {}
    for mode in ("eager", "compiled"):
        for cf in (True, False):
            name = f"sample(EulerMaruyama) [{mode} noise, check_finite={cf}]"
            total[name] = with_noise(mode, lambda cf=cf: sds.sample(P, GM.score(P), sds.EulerMaruyama(), x_T=x,
                                                                    steps=steps, seed=0, check_finite=cf))
    total["hand EM (torch.randn)"] = lambda: hand_em(score, x, grid.tolist())
    ttimes = run_interleaved(total, reps)
    per = {k: 1e6 * statistics.median(v) / steps for k, v in times.items()}
    per.update({k: 1e6 * statistics.median(v) / steps for k, v in ttimes.items()})
    return per


# --- report ------------------------------------------------------------------------------------
def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__, "sdesolve": sds.__version__}
    for mod in ("torchsde", "torchdiffeq"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            pass
    return v


def write(out_dir, record):
    """Write the record so far (called after every section: a late failure keeps the rest)."""
    record["load_after"] = round(os.getloadavg()[0], 2)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "loop_cpu")
    tmp = base + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, base + ".json")
    L = ["# The sampling loop against hand-written loops (cpu)", ""]
    L.append(f"- command: `{record['command']}`")
    L.append(f"- cpu: {record['cpu']} ({record['cores']} cores, torch threads 1)")
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    L.append(f"- noise path of the Philox rows: {record['noise_mode']} (compiled: the C kernel, sdesolve/philox_cpu.c; "
             "as recorded per row); "
             f"compiled path available: {record['compiled_available']}")
    L.append(f"- load average (1 min) before / after: {record['load_before']} / {record['load_after']} "
             "(a shared machine: absolute times are noisy; ratios are paired within a repetition)")
    L.append(f"- {record['reps']} repetitions, rows interleaved; times are medians (min..max); each ratio is the median "
             "of the per-repetition ratios, of wall time and of the thread's CPU time (which leaves out the time "
             "other work on the machine took from the core); a repetition of the loop rows runs them in order "
             "and then in reverse (A B C C B A), a row's time the mean of its two calls, so that a drift of "
             "the machine's speed over the repetition cancels")
    L.append("")
    for prob in record["problems"]:
        m = prob["meta"]
        L.append(f"## {prob['name']}: batch {m['batch']}, d = {m['dim']}, {m['steps']} steps")
        L.append("")
        L.append("| row | ms / step (median) | min..max | noise path |")
        L.append("|---|---:|---:|---|")
        for name, r in prob["rows"].items():
            L.append(f"| {name} | {r['median_ms_per_step']:.3f} | {r['min_ms_per_step']:.3f}..{r['max_ms_per_step']:.3f} "
                     f"| {prob['paths'].get(name, '')} |")
        L.append("")
        L.append("| ours | reference | wall-time ratio (median of paired) | min..max | CPU-time ratio | min..max | target |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for r in prob["ratios"]:
            tgt = "" if r["target"] is None else (f"< {r['target']:.2f}" if r["target"] == 1.0 else f"<= {r['target']:.2f}")
            L.append(f"| {r['ours']} | {r['reference']} | {r['ratio']:.2f} | {r['min']:.2f}..{r['max']:.2f} | "
                     f"{r['cpu_ratio']:.2f} | {r['cpu_min']:.2f}..{r['cpu_max']:.2f} | {tgt} |")
        L.append("")
    L.append("## Philox normals against torch.randn (per element)")
    L.append("")
    L.append("| batch x n | torch.randn (ns/elem) | eager (ns/elem) | compiled (ns/elem) | eager / randn | compiled / randn |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for r in record["philox"]:
        ne, rr = r["ns_per_element"], r["ratio_to_randn"]
        L.append(f"| {r['batch']} x {r['n']} | {ne['torch.randn']:.2f} | {ne['philox eager']:.2f} | "
                 f"{ne.get('philox compiled', float('nan')):.2f} | {rr['philox eager']:.1f} | "
                 f"{rr.get('philox compiled', float('nan')):.2f} |")
    L.append("")
    L.append("## Adaptive loop overhead per vector-field call (Dopri5)")
    L.append("")
    L.append("| case | sdesolve (us) | torchdiffeq (us) | ratio |")
    L.append("|---|---:|---:|---:|")
    for r in record["adaptive"]:
        o = r["overhead_per_nfe_us"]
        L.append(f"| {r['case']} | {o['sdesolve']:.0f} | {o['torchdiffeq']:.0f} | {r['ratio']:.2f} |")
    if record.get("profile"):
        L.append("")
        L.append("## Per-step costs (mixture shapes, batch 4096 x 2; each piece timed alone)")
        L.append("")
        L.append("| piece | us / step |")
        L.append("|---|---:|")
        for k, v in record["profile"].items():
            L.append(f"| {k} | {v:.1f} |")
    with open(base + ".md.tmp", "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(base + ".md.tmp", base + ".md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 steps, 3 repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--noise", choices=("compiled", "eager", "auto"), default="compiled",
                    help="SDESOLVE_NOISE for the Philox rows (they also run once more on eager)")
    ap.add_argument("--profile", action="store_true", help="add the per-step cost breakdown of the loop")
    ap.add_argument("--only", choices=("mixture", "mlp", "philox", "adaptive"), action="append")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reps, steps = (3, 20) if args.quick else (args.reps, args.steps)
    only = set(args.only or ("mixture", "mlp", "philox", "adaptive"))
    load_before = round(os.getloadavg()[0], 2)
    if args.noise == "compiled":
        philox.compile_normals()
    record = dict(command="python benchmarks/bench_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  cpu=cpu_name(), cores=os.cpu_count(), versions=versions(), reps=reps, noise_mode=args.noise,
                  compiled_available=philox.compiled_available(), load_before=load_before, problems=[],
                  philox=[], adaptive=[])
    with torch.no_grad():
        for prob in ("mixture", "mlp"):
            if prob not in only:
                continue
            rows, (times, cpu), pairs, paths, meta = loop_rows(prob, steps, reps, args.noise)
            ratios = []
            for a, b, target in pairs:
                med, lo, hi = paired_ratio(times, a, b)
                cmed, clo, chi = paired_ratio(cpu, a, b)
                ratios.append(dict(ours=a, reference=b, ratio=med, min=lo, max=hi, target=target,
                                   cpu_ratio=cmed, cpu_min=clo, cpu_max=chi))
            record["problems"].append(dict(name=prob, meta=meta, rows=summarize(times, steps), ratios=ratios,
                                           paths=paths))
            print(prob, {r["ours"] + " / " + r["reference"]: round(r["ratio"], 3) for r in ratios}, flush=True)
            write(args.out, record)
        if "philox" in only:
            record["philox"] = philox_rows(reps, [(4096, 2), (256, 64), (256, 3072)])
            print("philox", [(r["batch"], r["n"], r["ratio_to_randn"]) for r in record["philox"]], flush=True)
            write(args.out, record)
        if "adaptive" in only:
            record["adaptive"] = adaptive_rows(reps)
            print("adaptive", record["adaptive"], flush=True)
            write(args.out, record)
        if args.profile:
            record["profile"] = profile_loop(reps, steps=steps)
            print("profile", record["profile"], flush=True)
    write(args.out, record)


if __name__ == "__main__":
    main()
