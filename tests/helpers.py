"""Shared test utilities: fitted convergence slopes and Brownian paths shared across step sizes."""
import math

import torch


def fitted_slope(hs, errs) -> float:
    """Least-squares slope of log(err) against log(h)."""
    x = torch.log(torch.as_tensor(hs, dtype=torch.float64))
    y = torch.log(torch.as_tensor(errs, dtype=torch.float64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


class PathNoise:
    """A Brownian path on a fine uniform grid, seen by a solver on a coarser grid.

    ``coarse(k)`` gives a Noise-like object for the grid with ``fine_steps / k`` steps: step i
    draws z = dW_i / sqrt(h) with dW_i the sum of its k fine increments; ``increments`` also gives
    I10 = int (W(s) - W(t_i)) ds over the step, computed exactly for the piecewise-linear path.
    """

    def __init__(self, batch, dim, fine_steps, T, generator):
        self.h = T / fine_steps
        self.dW = torch.randn(fine_steps, batch, dim, generator=generator, dtype=torch.float64) * math.sqrt(self.h)
        self.fine_steps = fine_steps

    def W_T(self):
        return self.dW.sum(0)

    def coarse(self, k):
        return _Coarse(self, k)


class _Coarse:
    def __init__(self, path, k, i=0):
        self.path, self.k, self.i = path, k, i

    def at(self, i):
        return _Coarse(self.path, self.k, i)

    def _block(self):
        return self.path.dW[self.i * self.k:(self.i + 1) * self.k]

    def normal(self, like, draw=0):
        if draw != 0:
            raise AssertionError("this path provides one normal per step")
        H = self.k * self.path.h
        return (self._block().sum(0) / math.sqrt(H)).to(like.dtype).reshape(like.shape)

    def increments(self, like, dt, draw=0):
        blk = self._block()
        W = torch.cumsum(blk, 0)
        W_prev = W - blk
        # integral of the piecewise-linear path over each fine interval: h (W_prev + W) / 2
        I10 = (self.path.h * 0.5 * (W_prev + W)).sum(0)
        return W[-1].to(like.dtype).reshape(like.shape), I10.to(like.dtype).reshape(like.shape)
