"""Inpaint held-out 8x8 digits with a trained score model: half of each digit is hidden and the
sampler fills it in, keeping the known half exactly.

    python examples/train_digits.py          # trains runs/digits (a few minutes on a CPU)
    python examples/inpaint_digits.py        # -> examples/inpaint_digits.png

The grid has one row per (digit, mask): the original, the known half (hidden pixels grey), then
samples from two samplers, each sample on its own seed:

    PC       score_sde's inpainting: PredictorCorrector(ReverseDiffusion, Langevin(snr=0.16)) with
             the known pixels replaced by their forward-noised values after every step
             (sdesolve.Inpaint), 500 steps
    DDIM     the same replacement around DDIM (eta = 0), 100 steps

It prints, per sampler, the fraction of inpainted digits that the shipped digits classifier
assigns to the original's label, beside the classifier's accuracy on the originals, and the RMS
error of the hidden pixels (in [-1, 1] units) against the originals, beside that of filling them
with the training mean image.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.metrics import DigitsClassifierFeatures
from sdesolve.train import load_digits, load_trained
from sdesolve.train.images import save_image_grid


def masks() -> dict:
    """Boolean (1, 8, 8) masks, True = known."""
    bottom = torch.zeros(1, 8, 8, dtype=torch.bool)
    bottom[:, :4] = True  # the top half is known
    right = torch.zeros(1, 8, 8, dtype=torch.bool)
    right[:, :, :4] = True  # the left half is known
    return {"bottom half hidden": bottom, "right half hidden": right}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/digits", help="a trained digits checkpoint (file or directory)")
    ap.add_argument("--out", default="examples/inpaint_digits.png")
    ap.add_argument("--digits", type=int, default=6, help="held-out digits per mask in the grid")
    ap.add_argument("--samples", type=int, default=3, help="samples per digit and sampler in the grid")
    ap.add_argument("--eval", type=int, default=200, help="held-out digits per mask for the printed figures")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if not Path(args.checkpoint).exists():
        raise SystemExit(f"no checkpoint at {args.checkpoint}: train one with python examples/train_digits.py")
    trained = load_trained(args.checkpoint)  # EMA weights
    process, score = trained.process, trained.score()
    images, labels = load_digits("test")
    train_mean = load_digits("train")[0].mean(0, keepdim=True)
    classifier = DigitsClassifierFeatures()
    samplers = {
        "PC": (sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(snr=0.16, n_steps=1)), 500),
        "DDIM": (sds.DDIM(), 100),
    }

    rows, gray = [], torch.zeros(1, 8, 8)
    for mask_name, mask in masks().items():
        # evaluation set: the first args.eval held-out digits, one sample each (seed 0)
        known = images[: args.eval]
        model_known = trained.scaling.to_model(known)
        hidden_mean_rms = float((train_mean - known)[:, ~mask].pow(2).mean().sqrt())
        with torch.no_grad():
            acc_orig = float((classifier.logits(known).argmax(1) == labels[: args.eval]).double().mean())
        print(f"{mask_name}: classifier accuracy on the originals {acc_orig:.3f}; hidden-pixel RMS error of the "
              f"training mean image {hidden_mean_rms:.3f}")
        results = {}
        for name, (solver, steps) in samplers.items():
            start = time.perf_counter()
            with torch.no_grad():
                y = sds.sample(process, score, sds.Inpaint(solver, model_known, mask), shape=model_known.shape,
                               steps=steps, seed=0).y
                x = trained.to_data(y)
                acc = float((classifier.logits(x).argmax(1) == labels[: args.eval]).double().mean())
            assert torch.equal(x[:, mask], known[:, mask].clamp(-1, 1)), "known pixels must be kept"
            rms = float((x - known)[:, ~mask].pow(2).mean().sqrt())
            print(f"  {name:5s} ({steps} steps, {time.perf_counter() - start:.0f} s for {args.eval} digits): "
                  f"classified as the original's label {acc:.3f}; hidden-pixel RMS error {rms:.3f}")
            results[name] = x
        # the grid: original, known half, then args.samples samples per sampler (sample 0 from above,
        # the others on seeds of their own)
        extra = {}
        if args.samples > 1:
            batch = model_known[: args.digits].repeat_interleave(args.samples - 1, 0)
            seeds = torch.arange(1, batch.shape[0] + 1, dtype=torch.int64) * 7919
            for name, (solver, steps) in samplers.items():
                with torch.no_grad():
                    y = sds.sample(process, score, sds.Inpaint(solver, batch, mask), shape=batch.shape, steps=steps,
                                   seed=seeds).y
                extra[name] = trained.to_data(y).reshape(args.digits, args.samples - 1, *y.shape[1:])
        for i in range(args.digits):
            row = [known[i], torch.where(mask, known[i], gray)]
            for name in samplers:
                row.append(results[name][i])
                if name in extra:
                    row.extend(extra[name][i])
            rows.append(torch.stack(row))
    grid = torch.cat(rows)
    save_image_grid(grid, args.out, data_range=(-1, 1), nrow=rows[0].shape[0], upscale=6)
    print(f"grid ({len(rows)} rows: original, known part, {args.samples} x {' / '.join(samplers)}) -> {args.out}")


if __name__ == "__main__":
    main()
