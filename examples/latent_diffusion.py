"""Latent diffusion on scikit-learn's 8x8 digits: a convolutional VAE, then a diffusion model as
the prior of its latents; the likelihood bound with the prior's exact log-density.

    python examples/latent_diffusion.py            # a few minutes on two CPU cores

1. A VAE (8 latent dimensions) is trained with the standard normal prior on dequantized digits
   (17 grey levels, uniform noise inside each level).
2. A diffusion model (VP SDE, small MLP, denoising score matching) is trained on draws of the
   frozen encoder's posterior q(z | x) over the training images: the aggregate posterior.
3. On the 359 held-out images, the bound E_q[log p(x|z) + log p(z) - log q(z|x)] in bits per
   dimension, with p(z) = N(0, I) and with p(z) = the diffusion model's density from the
   probability-flow ODE (Dopri5, tolerances 1e-4, exact trace), on the same posterior draws: the paired
   difference per image is E_q[log p_diff(z) - log N(z)], with a bootstrap interval.
4. Samples: latents from the diffusion model (DPM-Solver++(2M), 20 steps) decoded, against
   latents from N(0, I) decoded by the same decoder; FD in the features of the pretrained MNIST
   classifier (digits upsampled to 28x28) against the held-out images, with bootstrap
   intervals over the samples, and the floor FD(train images, held-out images).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import sdesolve as sds
from sdesolve.latent import (ConvVAE, bits_per_dim_of, dequantize_levels, diffusion_prior_logp, elbo,
                             standard_normal_logp, vae_loss)
from sdesolve.metrics import MnistClassifierFeatures, extract_features, fd_from_features
from sdesolve.train import MLP, DenoisingScoreMatching, EpsPrediction, load_digits
from sdesolve.train.images import save_image_grid

LEVELS = 17  # digits pixels are 0..16


def levels_of(images):
    return torch.round((images + 1.0) * 8.0).long()


def bootstrap(values: np.ndarray, stat, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--prior-steps", type=int, default=2000)
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--k", type=int, default=2, help="posterior draws per held-out image")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--grid", default="examples/latent_diffusion_samples.png")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train, _ = load_digits("train")
    test, _ = load_digits("test")
    k_train, k_test = levels_of(train), levels_of(test)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    # 1. the VAE, standard normal prior
    vae = ConvVAE(channels=1, size=8, latent=args.latent, width=32)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.vae_steps)
    t0 = time.perf_counter()
    for it in range(args.vae_steps):
        idx = torch.randint(len(k_train), (128,), generator=g)
        x = dequantize_levels(k_train[idx], LEVELS, g)
        opt.zero_grad()
        loss = vae_loss(vae, x, g)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % 500 == 0:
            print(f"vae step {it + 1}: -elbo/dim {float(loss.detach()):.3f} nats")
    vae_s = time.perf_counter() - t0
    vae.requires_grad_(False)

    # 2. the diffusion prior on the aggregate posterior
    process = sds.VPSDE()
    dsm = DenoisingScoreMatching(process, EpsPrediction())
    net = MLP(shape=(args.latent,), hidden=128, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.prior_steps)
    t0 = time.perf_counter()
    for it in range(args.prior_steps):
        idx = torch.randint(len(k_train), (256,), generator=g)
        with torch.no_grad():
            z, _ = vae.sample_posterior(dequantize_levels(k_train[idx], LEVELS, g), 1, g)
        opt.zero_grad()
        loss = dsm(net, z[0], g)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % 1000 == 0:
            print(f"prior step {it + 1}: dsm loss {float(loss.detach()):.3f}")
    prior_s = time.perf_counter() - t0
    net.requires_grad_(False)
    score = dsm.score(net)
    print(f"training: VAE {args.vae_steps} steps {vae_s:.0f} s, diffusion prior {args.prior_steps} steps "
          f"{prior_s:.0f} s ({torch.get_num_threads()} thread(s))")

    # 3. bits/dim of the bound on held-out images, both priors on the same posterior draws
    t0 = time.perf_counter()
    ge = torch.Generator().manual_seed(1)
    x = dequantize_levels(k_test, LEVELS, ge)
    with torch.no_grad():
        draws = vae.sample_posterior(x, args.k, ge)
        e_normal, _ = elbo(vae, x, standard_normal_logp, z=draws)
        e_diff, _ = elbo(vae, x, diffusion_prior_logp(process, score, solver=sds.Dopri5(1e-4, 1e-4)), z=draws)
    D = x[0].numel()
    b_normal = bits_per_dim_of(e_normal, D, LEVELS).double().numpy()
    b_diff = bits_per_dim_of(e_diff, D, LEVELS).double().numpy()
    gain = b_normal - b_diff
    ci = bootstrap(gain, np.mean)
    se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v)))  # noqa: E731
    print(f"held-out bits/dim of the bound ({len(x)} images, {args.k} posterior draws each; "
          f"{time.perf_counter() - t0:.0f} s):")
    print(f"  VAE, N(0, I) prior:      {b_normal.mean():.4f} +- {se(b_normal):.4f}")
    print(f"  VAE, diffusion prior:    {b_diff.mean():.4f} +- {se(b_diff):.4f}")
    print(f"  paired gain (normal - diffusion): {gain.mean():.4f} bits/dim, 95% bootstrap [{ci[0]:.4f}, {ci[1]:.4f}]"
          f" -> {'resolved' if ci[0] > 0 else 'not resolved'}")

    # 4. samples and FD in the MNIST classifier's features
    with torch.no_grad():
        z_diff = sds.sample(process, score, sds.DPMSolverPP(order=2), shape=(args.samples, args.latent), steps=20,
                            seed=0).y
        z_norm = torch.randn(args.samples, args.latent, generator=torch.Generator().manual_seed(2))
        img_diff = vae.decode(z_diff).clamp(-1, 1)
        img_norm = vae.decode(z_norm).clamp(-1, 1)
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    both = torch.cat([img_diff[:50], img_norm[:50]])
    save_image_grid(both, args.grid, nrow=10, upscale=3)
    print(f"wrote {args.grid} (top 5 rows: latent diffusion; bottom 5 rows: the same decoder on N(0, I) latents)")
    feats = MnistClassifierFeatures()
    f_test = extract_features(feats, test).double()
    f_train = extract_features(feats, train).double()
    f_diff = extract_features(feats, img_diff).double()
    f_norm = extract_features(feats, img_norm).double()
    rng = np.random.default_rng(0)

    def fd_interval(f):
        vals = []
        for _ in range(50):
            i = torch.from_numpy(rng.integers(0, len(f), len(f)))
            j = torch.from_numpy(rng.integers(0, len(f_test), len(f_test)))
            vals.append(fd_from_features(f[i], f_test[j]))
        return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))

    fd = {name: (fd_from_features(f, f_test), fd_interval(f)) for name, f in
          (("latent diffusion", f_diff), ("VAE N(0, I) prior", f_norm), ("train images (floor)", f_train))}
    print(f"FD in MNIST-classifier features against the {len(test)} held-out images "
          f"({args.samples} samples; 95% bootstrap over samples and references):")
    for name, (v, (lo, hi)) in fd.items():
        print(f"  {name:22s} {v:8.2f}  [{lo:.2f}, {hi:.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            vae_seconds=vae_s, prior_seconds=prior_s, bpd_normal=float(b_normal.mean()),
            bpd_diffusion=float(b_diff.mean()), gain=float(gain.mean()), gain_ci=ci,
            fd={k: v[0] for k, v in fd.items()}, fd_ci={k: v[1] for k, v in fd.items()}), indent=1))


if __name__ == "__main__":
    main()
