"""Per-step cost of every solver on one fixed model, with pytest-benchmark.

    pytest benchmarks/bench_steps.py --benchmark-json benchmarks/results/steps_cpu.json
    python benchmarks/bench_steps.py benchmarks/results/steps_cpu.json      # -> steps_cpu.md

The model is a small MLP noise predictor (hidden 128, 2 residual blocks, seeded init) read
through ``Score.from_eps`` on the VP SDE, at batch 1024 and dimension d = 2 and d = 64. Each case
times one ``solver.step`` in the middle of a 20-step grid (the solver's default schedule), from
a state built by the first 10 steps, so multistep solvers step at full order; the same step is
repeated from the same input (solvers keep no state of their own), 20 rounds after 2 warm-up
rounds. ``test_model`` times one score evaluation; every solver is also timed with a stand-in
model returning a fixed tensor at no cost, which measures the solver's own arithmetic directly
(rather than as a difference of two noisy timings). Threads are pinned to 1. Each case records
its NFE per step, d, batch and model in ``extra_info``.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sdesolve as sds  # noqa: E402
from sdesolve.noise import Noise, streams  # noqa: E402
from sdesolve.timeplan import plan_times  # noqa: E402
from sdesolve.train.models import MLP  # noqa: E402

B = 1024
DIMS = (2, 64)
STEPS, AT = 20, 10

SOLVERS = {
    "Euler": sds.Euler, "Heun": sds.Heun, "Midpoint": sds.Midpoint, "RK4": sds.RK4,
    "Bosh3": lambda: sds.Bosh3(1e-3, 1e-3), "Dopri5": lambda: sds.Dopri5(1e-3, 1e-3),
    "Tsit5": lambda: sds.Tsit5(1e-3, 1e-3),
    "EulerMaruyama": sds.EulerMaruyama, "Milstein": sds.Milstein, "SRA1": sds.SRA1,
    "ReverseDiffusion": sds.ReverseDiffusion, "Ancestral": sds.Ancestral,
    "AdaptiveSDE": lambda: sds.AdaptiveSDE(1e-2, 1e-2),
    "PC(ReverseDiffusion+Langevin)": lambda: sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(0.16, 1)),
    "DDIM": sds.DDIM, "DDIM(eta=1)": lambda: sds.DDIM(1.0),
    "DPMSolver(2)": lambda: sds.DPMSolver(2), "DPMSolver(3)": lambda: sds.DPMSolver(3),
    "DPMSolverPP(2M)": lambda: sds.DPMSolverPP(2), "DPMSolverPP(3M)": lambda: sds.DPMSolverPP(3),
    "DPMSolverPP(2S)": lambda: sds.DPMSolverPP(2, multistep=False),
    "SDE-DPMSolverPP(2M)": lambda: sds.DPMSolverPP(2, sde=True),
    "UniPC(2)": lambda: sds.UniPC(2), "UniPC(3)": lambda: sds.UniPC(3), "EDMHeun": sds.EDMHeun,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_score(d: int, stub: bool = False):
    """The VP SDE and the Score of the seeded MLP; with ``stub``, of a stand-in that returns a
    fixed eps tensor at no cost (what is left of a step is the solver's own arithmetic)."""
    process = sds.VPSDE()
    if stub:
        eps = 0.5 * torch.randn(B, d, generator=torch.Generator().manual_seed(1))
        return process, sds.Score.from_eps(lambda x, label: eps, process, check=False)
    torch.manual_seed(0)
    net = MLP(shape=(d,), hidden=128, depth=2).eval().requires_grad_(False)
    return process, sds.Score.from_eps(net, process, check=False)


def prepared_step(solver, d: int, stub: bool = False):
    """(eq, t0, t1, y, state, noise) for step AT of a STEPS-step grid, after the first AT steps."""
    process, score = model_score(d, stub)
    eq = process.reverse(score) if solver.stochastic else process.probability_flow(score)
    solver.check(eq)
    schedule = solver.default_schedule
    grid = schedule(process, STEPS) if callable(schedule) else sds.schedules.uniform(process, STEPS)
    tvec = lambda i: grid[i].expand(B)  # noqa: E731
    noise = Noise(streams(0, B))
    y = process.prior_from_normal(noise.at(0xFFFFFFFF).normal(torch.empty(B, d)))
    at = plan_times(process, schedule=grid).positions
    with torch.no_grad():
        state = solver.init(eq, tvec(0), y)
        for i in range(AT):
            out = solver.step(eq, tvec(i), tvec(i + 1), y, state, noise.at(i), at[i])
            y, state = out.y, out.state
    return eq, tvec(AT), tvec(AT + 1), y, state, noise.at(AT), at[AT]


ROUNDS = 20


@pytest.mark.parametrize("d", DIMS)
def test_model(benchmark, d):
    process, score = model_score(d)
    x, t = torch.randn(B, d), torch.full((B,), 0.5, dtype=torch.float64)
    benchmark.extra_info.update(solver="model", d=d, batch=B, nfe_per_step=1, model="mlp")
    benchmark.group = f"d={d}"
    with torch.no_grad():
        out = benchmark.pedantic(score, (x, t, process), rounds=ROUNDS, warmup_rounds=2)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("model", ["mlp", "stub"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_step(benchmark, name, d, model):
    solver = SOLVERS[name]()
    eq, t0, t1, y, state, noise, at = prepared_step(solver, d, stub=model == "stub")
    eq.reset_counts()
    with torch.no_grad():
        solver.step(eq, t0, t1, y, state, noise, at)
    nfe = eq.nfe  # model calls of one step, counted on the equation
    benchmark.extra_info.update(solver=name, d=d, batch=B, nfe_per_step=nfe, model=model,
                                declared_nfe_per_step=solver.nfe_per_step)
    benchmark.group = f"d={d}, {model}"
    with torch.no_grad():
        out = benchmark.pedantic(solver.step, (eq, t0, t1, y, state, noise, at), rounds=ROUNDS, warmup_rounds=2)
    assert out.y.shape == y.shape and torch.isfinite(out.y).all()


def summarize(path: str) -> str:
    """A Markdown table from a --benchmark-json file: median per step with the MLP, per model
    call, and the solver's own cost per step, measured with the stand-in model."""
    with open(path) as f:
        data = json.load(f)
    cases = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        cases[(e["solver"], e["d"], e["model"])] = (b["stats"]["median"], e["nfe_per_step"])
    mi = data["machine_info"]
    lines = ["# Per-step cost of the solvers (CPU, 1 thread)", "",
             f"`pytest benchmarks/bench_steps.py --benchmark-json {path}`; {mi.get('cpu', {}).get('brand_raw', '')}, "
             f"python {mi.get('python_version')}, {data.get('datetime', '')}. Medians of {ROUNDS} rounds. Model: an "
             f"MLP eps-predictor (hidden 128, 2 blocks) through Score.from_eps on the VP SDE, batch {B}; one step in "
             f"the middle of a {STEPS}-step grid. Solver's own cost: the same step with a stand-in model that returns "
             "a fixed tensor (no model cost).", ""]
    for d in DIMS:
        if ("model", d, "mlp") not in cases:
            continue
        model = cases[("model", d, "mlp")][0]
        lines += [f"## d = {d} (one model call: {model * 1e6:.0f} us)", "",
                  "| solver | NFE/step | step with the MLP (us) | per NFE (us) | solver's own cost per step (us) | "
                  "own cost / model call |", "|---|---:|---:|---:|---:|---:|"]
        names = sorted({k[0] for k in cases if k[1] == d and k[0] != "model"}, key=lambda n: cases[(n, d, "mlp")][0])
        for name in names:
            med, k = cases[(name, d, "mlp")]
            own = cases.get((name, d, "stub"), (float("nan"), k))[0]
            lines.append(f"| {name} | {k} | {med * 1e6:.0f} | {med / max(k, 1) * 1e6:.0f} | {own * 1e6:.0f} | "
                         f"{own / model:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/steps_cpu.json"
    text = summarize(src)
    with open(os.path.splitext(src)[0] + ".md", "w") as f:
        f.write(text + "\n")
    print(text)
