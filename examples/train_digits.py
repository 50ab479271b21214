"""Train a small U-Net on scikit-learn's 8x8 digits on the CPU, then sample a grid and measure FD.

    python examples/train_digits.py                      # trains into runs/digits (or reuses it)
    python examples/train_digits.py --steps 4000 --out runs/digits-long

The same model from the command line:

    sdesolve train --data digits --model unet --process vp --loss edm --steps 2000 --out runs/digits
    sdesolve sample --checkpoint runs/digits --solver heun --nfe 200 --n 100 --out digits.png

FD is measured in the features of the shipped digits classifier against the held-out split,
beside the floor FD(train split, held-out split) that real data of the same size reaches.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.metrics import DigitsClassifierFeatures, extract_features, fd_from_features
from sdesolve.train import EDMLoss, TrainConfig, Trainer, UNet, fit_scaling, load_digits, load_trained
from sdesolve.train.images import save_image_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="runs/digits")
    ap.add_argument("--grid", default="examples/digits_samples.png")
    ap.add_argument("--n", type=int, default=1438, help="samples for FD (the size of the train split)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    process = sds.VPSDE()
    out = Path(args.out)
    if (out / "last.pt").exists() and load_trained(out).step >= args.steps:
        print(f"reusing {out} (step {load_trained(out).step})")
    else:
        images, _ = load_digits("train")  # (1438, 1, 8, 8) in [-1, 1]
        scaling = fit_scaling(images)     # [-1, 1] stays [-1, 1]; recorded to map samples back
        data = scaling.to_model(images)
        loss = EDMLoss(process, sigma_data=float(data.double().std()))  # as the CLI chooses it
        torch.manual_seed(0)
        model = loss.wrap(UNet(in_channels=1, ch=32, mult=(1, 2, 2), blocks=1, attn=(2,), resolution=8))
        trainer = Trainer(model, loss, data, TrainConfig(steps=args.steps, batch_size=128, lr=2e-3),
                          out=out, scaling=scaling, source="digits", progress=True)
        if (out / "last.pt").exists():
            trainer.resume(out)
        start = time.perf_counter()
        trainer.train()
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s")

    trained = load_trained(out)  # EMA weights
    with torch.no_grad():
        sol = sds.sample(trained.process, trained.score(), sds.Heun(), shape=(args.n, 1, 8, 8), steps=100, seed=0)
    samples = trained.to_data(sol.y)
    save_image_grid(samples[:100], args.grid, data_range=(-1, 1), nrow=10, upscale=6)

    features = DigitsClassifierFeatures()
    train_f = extract_features(features, load_digits("train")[0])
    test_f = extract_features(features, load_digits("test")[0])
    fd = fd_from_features(extract_features(features, samples), test_f)
    floor = fd_from_features(train_f, test_f)
    print(f"FD(samples, held-out) = {fd:.2f}; floor FD(train, held-out) = {floor:.2f}; grid -> {args.grid}")


if __name__ == "__main__":
    main()
