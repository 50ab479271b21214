"""A small CNN classifier of scikit-learn's 8x8 digits, the feature network for digits FD.

The shipped weights ``weights/digits_classifier.pt`` come from :func:`train_digits_classifier`
with its defaults: deterministic (seeded, single-threaded, CPU), on the "train" split of
:func:`sdesolve.train.data.load_digits` only, a fixed number of epochs with no model selection
on the test split. Regenerate them with::

    python -m sdesolve.metrics.digits_classifier            # writes the shipped file
    python -m sdesolve.metrics.digits_classifier --out PATH

Architecture (input (B, 1, 8, 8) in [-1, 1]):
conv3x3(1->16) ReLU, conv3x3(16->32) ReLU, maxpool 2 -> 32x4x4, linear(512->64) ReLU ("features",
the 64-d penultimate layer), linear(64->10) (logits). About 38k parameters.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DigitsCNN", "train_digits_classifier", "digits_accuracy", "DIGITS_WEIGHTS"]

#: the shipped weights file
DIGITS_WEIGHTS = Path(__file__).parent / "weights" / "digits_classifier.pt"


class DigitsCNN(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1]; :meth:`features` is the 64-d penultimate layer."""

    feature_dim = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in {-1, 0, 1}^2, filling with background (-1)."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (b,), generator=generator)
    dx = torch.randint(0, 3, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(8)[None, :])  # (b, 8)
    cols = (dx[:, None] + torch.arange(8)[None, :])
    idx_b = torch.arange(b)[:, None, None]
    return padded[idx_b, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_digits_classifier(
    seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4
) -> DigitsCNN:
    """Train :class:`DigitsCNN` on the digits train split (deterministic; ~10 s on one CPU core).

    Adam with a cosine learning-rate decay over ``epochs`` epochs, cross-entropy, random
    one-pixel translations as augmentation. All randomness (initialisation, shuffling,
    augmentation) comes from ``seed``; the run is single-threaded so reductions are reproducible.
    """
    from sdesolve.train.data import load_digits

    x, y = load_digits("train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = -(-len(y) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(model(_shift(x[idx], g)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval().requires_grad_(False)


def digits_accuracy(model: nn.Module, split: str = "test") -> float:
    """Fraction of the digits ``split`` that ``model`` (images -> logits) classifies correctly."""
    from sdesolve.train.data import load_digits

    x, y = load_digits(split)
    with torch.inference_mode():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the digits feature classifier and save its weights.")
    parser.add_argument("--out", default=os.fspath(DIGITS_WEIGHTS), help="output state-dict path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = train_digits_classifier(seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out)
    print(f"train accuracy {digits_accuracy(model, 'train'):.4f}  test accuracy {digits_accuracy(model, 'test'):.4f}")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
