"""Adaptive and SDE solvers against torchdiffeq and torchsde on the same problems, in one run.

    python benchmarks/bench_solvers.py [--quick] [--out benchmarks/results]

writes ``solvers_<device>.json`` and ``solvers_<device>.md``. For every case both libraries
integrate the same equation from the same initial states; the vector field (or drift and
diffusion) is wrapped in a timer, so

    wall          the solve's wall time (best of ``repeats``)
    nfe           vector-field calls; per-sample evaluations = the summed batch sizes of the calls
    overhead/nfe  (wall - time inside the vector field) / nfe: what the solver itself costs per
                  call (step arithmetic, control, noise, bookkeeping)

and the ratios ours / peer of wall time and overhead per call; ODE rows also give the largest
error over the batch in units of the tolerance, against a 1e-10 reference. ODE cases: adaptive dopri5 and
bosh3 at two tolerances (torchdiffeq uses one step size for the batch, ours one per sample).
SDE cases: fixed steps (torchsde's euler, milstein (derivative-free) and srk against
EulerMaruyama, Milstein and SRA1; torchsde draws its Brownian motion with a BrownianInterval,
ours with counter-based Philox noise). AdaptiveSDE has no torchsde counterpart and is reported
alone. Threads are pinned to 1; the load average of the machine is recorded with the results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sdesolve as sds  # noqa: E402

GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])


class Timed:
    """A callable that counts its calls, the summed batch sizes and the seconds spent inside."""

    def __init__(self, fn):
        self.fn, self.calls, self.rows, self.seconds = fn, 0, 0, 0.0

    def reset(self):
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        self.rows += args[1].shape[0]
        return out


def mlp_field(dim, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(dim + 1, hidden, generator=g, dtype=dtype) / math.sqrt(dim + 1)
    W2 = torch.randn(hidden, hidden, generator=g, dtype=dtype) / math.sqrt(hidden)
    W3 = torch.randn(hidden, dim, generator=g, dtype=dtype) / math.sqrt(hidden)

    def f(t, x):
        t = t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        h = torch.tanh(torch.cat([x, t], 1) @ W1)
        return torch.tanh(h @ W2) @ W3 - 0.5 * x

    return f


def best_of(repeats, fn):
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def record(name, lib, wall, timed, extra=None):
    row = dict(case=name, lib=lib, wall_s=wall, nfe=timed.calls, sample_evals=timed.rows,
               field_s=timed.seconds, overhead_per_nfe_us=1e6 * (wall - timed.seconds) / max(timed.calls, 1))
    row.update(extra or {})
    return row


# --- ODE cases ----------------------------------------------------------------------------------
def ode_cases(quick):
    B = 128 if quick else 512
    p = sds.VPSDE()
    pf = p.probability_flow(GM.score(p))
    x_pf = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mlp = mlp_field(16, 64, torch.float32)
    x_mlp = torch.randn(B, 16, generator=torch.Generator().manual_seed(1))
    return [
        # name, field f(t (B,), x), y0, t0, t1
        (f"VP PF-ODE, 2-D mixture, B={B}, float64", lambda t, x: pf.drift(t, x), x_pf, p.T, p.t_min),
        (f"MLP field 16-64-64-16, B={B}, float32", mlp, x_mlp, 0.0, 2.0),
    ]


def _scaled(y, ref, tol):
    """max over samples and elements of |y - ref| / (tol (1 + |ref|))."""
    return float(((y.double() - ref).abs() / (tol * (1 + ref.abs()))).max())


def run_ode(quick, repeats):
    import torchdiffeq

    rows = []
    tols = [1e-3, 1e-5]
    pairs = [("dopri5", sds.Dopri5), ("bosh3", sds.Bosh3)]
    for name, field, y0, t0, t1 in ode_cases(quick):
        ts = torch.tensor([t0, t1], dtype=torch.float64)
        # reference: our Dopri5 at 1e-10 in float64 (per-sample control)
        ref = sds.solve(sds.ODE(lambda t, x: field(t, x.to(y0.dtype)).to(torch.float64)), y0.double(), t0, t1,
                        sds.Dopri5(1e-10, 1e-10)).y
        for method, cls in pairs:
            for tol in tols:
                case = f"{name}: {method} rtol=atol={tol:g}"
                ours_f = Timed(lambda t, x: field(t, x))
                eq = sds.ODE(ours_f)

                def ours():
                    ours_f.reset()
                    return sds.solve(eq, y0, t0, t1, cls(tol, tol))

                wall, sol = best_of(repeats, ours)
                rows.append(record(case, "sdesolve", wall, ours_f,
                                   dict(accepted_mean=float(sol.stats.accepted.double().mean()),
                                        rejected_mean=float(sol.stats.rejected.double().mean()),
                                        max_error_over_tol=_scaled(sol.y, ref, tol))))
                peer_f = Timed(lambda t, x: field(t.to(torch.float64).expand(x.shape[0]), x))

                def peer():
                    peer_f.reset()
                    # the end time is a step boundary, so no evaluation falls beyond it (the VP
                    # marginal is undefined below t = 0)
                    return torchdiffeq.odeint(peer_f, y0, ts.to(y0.dtype), method=method, rtol=tol, atol=tol,
                                              options=dict(step_t=torch.tensor([t1], dtype=y0.dtype)))[-1]

                wall_p, y_p = best_of(repeats, peer)
                rows.append(record(case, "torchdiffeq", wall_p, peer_f, dict(max_error_over_tol=_scaled(y_p, ref, tol))))
    return rows


# --- SDE cases ----------------------------------------------------------------------------------
def run_sde(quick, repeats):
    import torchsde

    rows = []
    B = 128 if quick else 512
    steps = 50 if quick else 200
    T = 1.0
    D = 16
    drift_mlp = mlp_field(D, 64, torch.float32, seed=2)

    class Diagonal(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self, f, g):
            super().__init__()
            self.f_, self.g_ = f, g

        def f(self, t, y):
            return self.f_(t.expand(y.shape[0]), y)

        def g(self, t, y):
            return self.g_(t.expand(y.shape[0]), y)

    class Additive(Diagonal):
        noise_type = "additive"

        def g(self, t, y):
            return torch.diag_embed(self.g_(t.expand(y.shape[0]), y))

    x0 = torch.randn(B, D, generator=torch.Generator().manual_seed(3)) * 0.5
    diag_g = lambda t, x: 0.3 * torch.sin(x) + 0.5
    add_g = lambda t, x: (0.5 + 0.5 * t).to(x.dtype)[:, None].expand_as(x)
    cases = [
        ("euler", sds.EulerMaruyama(), "diagonal", diag_g),
        ("milstein", sds.Milstein(), "diagonal", diag_g),
        ("srk", sds.SRA1(), "additive", add_g),
    ]
    ts = torch.tensor([0.0, T])
    for method, solver, noise, g in cases:
        case = f"MLP drift 16-64-64-16, {noise} noise, B={B}, {steps} steps, float32: {method}"
        f_o, g_o = Timed(drift_mlp), Timed(g)
        eq = sds.SDE(f_o, g_o, noise=noise)

        def ours():
            f_o.reset(), g_o.reset()
            return sds.solve(eq, x0, 0.0, T, solver, steps=steps, seed=0)

        wall, _ = best_of(repeats, ours)
        row = record(case, "sdesolve", wall, f_o)
        row["overhead_per_nfe_us"] = 1e6 * (wall - f_o.seconds - g_o.seconds) / f_o.calls
        philox = sds.Noise.from_seed(0, B)
        draws = 2 if method == "srk" else 1
        t_noise, _ = best_of(repeats, lambda: [philox.at(i).normal(x0, d) for i in range(steps) for d in range(draws)])
        row["noise_us_per_step"] = 1e6 * t_noise / steps
        rows.append(row)
        f_p, g_p = Timed(drift_mlp), Timed(g)
        sde = (Additive if noise == "additive" else Diagonal)(f_p, g_p)
        opts = dict(grad_free=True) if method == "milstein" else {}

        def peer():
            f_p.reset(), g_p.reset()
            return torchsde.sdeint(sde, x0, ts, method=method, dt=T / steps, options=opts)[-1]

        wall_p, _ = best_of(repeats, peer)
        row = record(case, "torchsde", wall_p, f_p)
        row["overhead_per_nfe_us"] = 1e6 * (wall_p - f_p.seconds - g_p.seconds) / f_p.calls
        rows.append(row)

    # AdaptiveSDE alone: the reverse VP SDE of the mixture, exact scores
    p = sds.VPSDE()
    score = GM.score(p)
    timed_score = Timed(lambda x, t: score(x, t))
    for tol in (1e-2, 5e-2):
        case = f"AdaptiveSDE reverse VP SDE, 2-D mixture, B={B}, rtol=atol={tol:g}"

        def ours():
            timed_score.reset()
            return sds.sample(p, sds.Score(lambda x, t: timed_score(x, t), p), sds.AdaptiveSDE(tol, tol),
                              shape=(B, 2), seed=0)

        wall, sol = best_of(repeats, ours)
        rows.append(dict(case=case, lib="sdesolve", wall_s=wall, nfe=timed_score.calls,
                         sample_evals=sol.stats.sample_nfe, field_s=timed_score.seconds,
                         overhead_per_nfe_us=1e6 * (wall - timed_score.seconds) / timed_score.calls,
                         accepted_mean=float(sol.stats.accepted.double().mean()),
                         rejected_mean=float(sol.stats.rejected.double().mean())))
    return rows


# --- output -------------------------------------------------------------------------------------
def environment(command):
    import torchdiffeq
    import torchsde

    from sdesolve.bench.runner import cpu_name

    return dict(device="cpu", cpu=cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, torchdiffeq=torchdiffeq.__version__,
                torchsde=torchsde.__version__, sdesolve=sds.__version__, command=command)


def ratios(rows):
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["lib"]] = r
    out = []
    for case, libs in by_case.items():
        ours = libs.get("sdesolve")
        peer = next((v for k, v in libs.items() if k != "sdesolve"), None)
        if ours is None or peer is None:
            continue
        out.append(dict(case=case, peer=peer["lib"], wall_ratio=ours["wall_s"] / peer["wall_s"],
                        overhead_per_nfe_ratio=ours["overhead_per_nfe_us"] / peer["overhead_per_nfe_us"],
                        nfe_ratio=ours["nfe"] / peer["nfe"], sample_evals_ratio=ours["sample_evals"] / peer["sample_evals"]))
    return out


def markdown(env, rows, rat, load):
    lines = [f"# Solvers against torchdiffeq / torchsde ({env['device']})", "",
             f"- command: `{env['command']}`",
             f"- cpu: {env['cpu']} ({env['cores']} cores, torch threads {env['torch_threads']})",
             f"- versions: python {env['python']}, torch {env['torch']}, torchdiffeq {env['torchdiffeq']}, "
             f"torchsde {env['torchsde']}, sdesolve {env['sdesolve']}",
             f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f} (other processes share "
             "the machine: absolute times are noisy, ratios from the same run less so)", "",
             "| case | library | wall (ms) | nfe | per-sample evals | overhead / nfe (us) | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = []
        if "accepted_mean" in r:
            notes.append(f"accepted/sample {r['accepted_mean']:.1f}, rejected/sample {r['rejected_mean']:.1f}")
        if "max_error_over_tol" in r:
            notes.append(f"max error / tol {r['max_error_over_tol']:.2f}")
        if "noise_us_per_step" in r:
            notes.append(f"Philox noise {r['noise_us_per_step']:.0f} us per step (in overhead)")
        lines.append(f"| {r['case']} | {r['lib']} | {1e3 * r['wall_s']:.1f} | {r['nfe']} | {r['sample_evals']} | "
                     f"{r['overhead_per_nfe_us']:.0f} | {'; '.join(notes)} |")
    lines += ["", "Ratios (ours / peer):", "",
              "| case | peer | wall | overhead per nfe | nfe | per-sample evals |", "|---|---|---:|---:|---:|---:|"]
    for r in rat:
        lines.append(f"| {r['case']} | {r['peer']} | {r['wall_ratio']:.2f} | {r['overhead_per_nfe_ratio']:.2f} | "
                     f"{r['nfe_ratio']:.2f} | {r['sample_evals_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches and fewer steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/bench_solvers.py" + (" --quick" if args.quick else "") + \
        (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    load0 = os.getloadavg()[0]
    rows = run_ode(args.quick, args.repeats) + run_sde(args.quick, args.repeats)
    load1 = os.getloadavg()[0]
    env = environment(command)
    rat = ratios(rows)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"solvers_{env['device']}")
    with open(base + ".json", "w") as fh:
        json.dump(dict(environment=env, load_average=[load0, load1], results=rows, ratios=rat), fh, indent=2)
    md = markdown(env, rows, rat, (load0, load1))
    with open(base + ".md", "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
