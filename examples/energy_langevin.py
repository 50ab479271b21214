"""An energy model of a 2-D Gaussian mixture, trained by sliced score matching, sampled by plain
and by annealed Langevin dynamics.

    python examples/energy_langevin.py                 # several minutes on two CPU cores
    python examples/energy_langevin.py --steps 1000    # quicker, rougher

The network E(x, sigma) is a noise-conditional energy (its score -grad_x E) trained with the
variance-reduced sliced score matching objective at 20 geometric noise levels from 6 down to
0.05 (NCSN's weighting sigma^2). Then, from chains started at N(0, I):

* plain Langevin at the smallest level with the EXACT score: each chain falls into the mode
  whose basin it starts in and stays there; the component shares are those of the basins
  (about 0.59 / 0.31 / 0.10), not the weights (0.5 / 0.3 / 0.2), however many steps are taken:
  crossing between modes 4 apart with standard deviations 0.3-0.5 has to climb a barrier of
  ~exp(8) (Song & Ermon 2019, Sec. 3.2.2);
* plain Langevin with the LEARNED energy at the smallest level: the score is fitted only where
  the data are, so between the modes (where the data density is ~exp(-8)) the learned
  landscape is unconstrained (their Sec. 3.2.1); there the chains drift wherever it tilts, which
  is no more the mixture than the basin shares are;
* annealed Langevin over the levels: at the large levels the modes overlap, the score is
  learned everywhere the chains go, they move freely between modes, and the weights are
  restored before the small levels localise them.

The figure shows the shares of each component against the number of Langevin steps, both
ways, and the samples. Shares are found with the exact mixture's posterior.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import sdesolve as sds
from sdesolve.langevin_sampling import langevin, noise_conditional
from sdesolve.train import GMM2D, gmm2d
from sdesolve.train.score_matching import EnergyScore, Sliced, geometric_levels


class NoiseConditionalEnergy(nn.Module):
    """E(x, sigma) = MLP([x, log sigma]) / sigma."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x, sigma):
        return self.net(torch.cat([x, torch.log(sigma)[:, None]], 1))[:, 0] / sigma


def shares(x):
    mix = sds.GaussianMixture(GMM2D["weights"], GMM2D["means"], GMM2D["variances"])
    k = mix.posterior(x.double()).argmax(1)
    return torch.bincount(k, minlength=3).double() / x.shape[0]


def train_energy(steps: int = 3000, log: bool = True):
    """The recipe: E(x, sigma) trained by SSM-VR at 20 levels 6 -> 0.05, batch 256, Adam 2e-3.
    Returns (model, levels, seconds)."""
    torch.manual_seed(0)
    levels = geometric_levels(6.0, 0.05, 20)
    model = EnergyScore(NoiseConditionalEnergy())
    loss = Sliced(probes=1, noise="rademacher", variance_reduction=True, noise_levels=levels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for it in range(steps):
        opt.zero_grad()
        value = loss(model, gmm2d(256, g), g)
        value.backward()
        opt.step()
        if log and (it + 1) % 500 == 0:
            print(f"step {it + 1}: sliced loss {float(value.detach()):.3f}", flush=True)
    model.requires_grad_(False)
    return model, levels, time.perf_counter() - t0


def start(n: int) -> torch.Tensor:
    """Chains start from N(0, I)."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def annealed_sample(model, levels, x0, per_level: int) -> torch.Tensor:
    """Annealed Langevin over the levels, ``per_level`` updates each, step_lr 0.1 sigma_L^2."""
    process, score, schedule = noise_conditional(model, levels)
    solver = sds.AnnealedLangevin(n_steps=per_level, step_lr=0.1 * float(levels[-1]) ** 2, denoise=False)
    return sds.sample(process, score, solver, x_T=x0, schedule=schedule, seed=2).y


def exact_score(x, sigma):
    """The exact score of the mixture convolved with N(0, sigma^2 I) (sigma shared by the batch)."""
    var = torch.tensor(GMM2D["variances"], dtype=torch.float64) + float(sigma[0]) ** 2
    return sds.GaussianMixture(GMM2D["weights"], GMM2D["means"], var).score_at(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=1000, help="chains")
    ap.add_argument("--out", default="examples/energy_langevin.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, levels, train_s = train_energy(args.steps)
    print(f"trained {args.steps} steps in {train_s:.0f} s ({torch.get_num_threads()} thread(s))")

    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)
    x0 = start(args.n)
    print(f"start N(0, I): shares {shares(x0).numpy().round(3)}; weights {w.numpy()}")
    plain_steps = [0, 10, 30, 100, 300, 1000, 3000]
    t0 = time.perf_counter()
    with torch.no_grad():  # values only: the energy's gradient in x is still taken (torch.func)
        _, saved = langevin(model, x0, 0.01, plain_steps[-1], seed=1, sigma=float(levels[-1]), save_at=plain_steps)
        plain = {k: shares(v) for k, v in saved.items()}
        _, saved_exact = langevin(exact_score, x0, 0.01, plain_steps[-1], seed=1, sigma=float(levels[-1]),
                                  save_at=plain_steps)
        plain_exact = {k: shares(v) for k, v in saved_exact.items()}
        annealed, final = {}, None
        for per_level in [1, 3, 10, 30]:
            final = annealed_sample(model, levels, x0, per_level)
            annealed[per_level * len(levels)] = shares(final)
    print(f"sampling: {time.perf_counter() - t0:.0f} s")
    print("plain Langevin at sigma = 0.05, step 0.01: steps -> shares (max |share - weight|), learned | exact score")
    for k, s in plain.items():
        e = plain_exact[k]
        print(f"  {k:6d}  {s.numpy().round(3)}  ({float((s - w).abs().max()):.3f})  |  {e.numpy().round(3)}  "
              f"({float((e - w).abs().max()):.3f})")
    print("annealed Langevin, 20 levels 6 -> 0.05: total steps -> shares (max |share - weight|)")
    for k, s in annealed.items():
        print(f"  {k:6d}  {s.numpy().round(3)}  ({float((s - w).abs().max()):.3f})")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = ["C0", "C1", "C2"]
    for c in range(3):
        ax[0].plot([max(k, 1) for k in plain], [float(s[c]) for s in plain.values()], "--o", color=colors[c],
                   label=f"plain, comp. {c}")
        ax[0].plot([max(k, 1) for k in plain_exact], [float(s[c]) for s in plain_exact.values()], ":x",
                   color=colors[c], label=f"plain, exact score, comp. {c}")
        ax[0].plot(list(annealed), [float(s[c]) for s in annealed.values()], "-s", color=colors[c],
                   label=f"annealed, comp. {c}")
        ax[0].axhline(float(w[c]), color=colors[c], lw=0.6, alpha=0.6)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("Langevin steps (0 plotted at 1)")
    ax[0].set_ylabel("share of chains")
    ax[0].set_title("component shares (thin lines: weights)", fontsize=9)
    ax[0].legend(fontsize=6, ncol=2)
    x_plain = saved[plain_steps[-1]]
    data = gmm2d(args.n, torch.Generator().manual_seed(5))
    for a, pts, title in ((ax[1], x_plain, f"plain, {plain_steps[-1]} steps"),
                          (ax[2], final, f"annealed, {list(annealed)[-1]} steps")):
        a.scatter(data[:, 0], data[:, 1], s=1, color="0.8", label="data")
        a.scatter(pts[:, 0], pts[:, 1], s=1, color="C3", label="samples")
        a.set_title(title)
        a.set_xlim(-4, 4)
        a.set_ylim(-4.5, 3.5)
        a.set_aspect("equal")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
