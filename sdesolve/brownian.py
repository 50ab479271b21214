"""Brownian increments under step-size control: what a rejected step's noise becomes.

Under per-sample step-size control every random number of an attempt is drawn from the sample's
own stream at the sample's attempt counter (accepted + rejected steps so far), so what a sample
sees depends on nothing but the sample. The Brownian increment of an attempt (draw 0) is
bridged: a rejected increment is kept, and the retry over a shorter step takes its Brownian-bridge
refinement (Rackauckas & Nie 2017, "Adaptive methods for stochastic differential equations via
natural embeddings and rejection sampling with memory", RSwM1), so that the accepted increments
are exactly those of one Brownian path. Drawing a fresh increment after a rejection instead (as
Jolicoeur-Martineau et al. 2021 do) keeps the increments that the error test favours and biases
the result in low dimension.
"""
from __future__ import annotations

import torch

from .noise import Draw
from .tensors import per_sample

__all__ = ["BridgedIncrements", "StepNoise"]

_EPS64 = torch.finfo(torch.float64).eps


class StepNoise:
    """The noise a stochastic solver sees for one attempt: draw 0 is the (bridged) Brownian
    increment, as z = dW / sqrt(|h|); other draws come from the sample's stream at the attempt."""

    def __init__(self, z, noise):
        self.z, self.noise = z, noise

    def __len__(self):
        return self.z.shape[0]

    def normal(self, like, draw: int = 0):
        if draw == 0:
            if like.shape != self.z.shape:
                raise ValueError(f"noise of shape {tuple(self.z.shape)} asked for shape {tuple(like.shape)}")
            return self.z.to(like.dtype)
        return self.noise.normal(like, draw)

    def increments(self, like, dt, draw: int = 0):
        raise TypeError("under step-size control the Brownian path is bridged for dW alone; a solver that needs "
                        "I10 (e.g. SRA1) runs on a fixed grid")


class BridgedIncrements:
    """Per-sample Brownian increments that survive rejections (RSwM1).

    Each sample keeps a stack of Brownian increments over intervals it has not yet stepped over,
    earliest on top. An attempt over [t, t + h]: with an empty stack, dW = sqrt(|h|) z is fresh;
    otherwise the top interval (h_s, dW_s) is used whole if h >= h_s (the step shrinks to h_s), or
    split by the Brownian bridge when h < h_s:
        dW = (h / h_s) dW_s + sqrt(|h| (1 - h / h_s)) xi,   remainder (h_s - h, dW_s - dW) stays on top.
    A rejected attempt pushes its (h, dW) back on the stack. z and xi are draw 0 and
    ``Draw.BRIDGE`` of the sample's stream at its attempt counter.
    """

    def __init__(self, batch, span):
        self.B = batch
        self.tol = 64 * _EPS64 * max(span, 1.0)
        self.depth = None
        self.hs = self.dWs = None
        self._h = self._dW = None

    def _ensure(self, like, need):
        if self.hs is None:
            self.depth = torch.zeros(self.B, dtype=torch.int64, device=like.device)
            self.hs = torch.zeros(self.B, 0, dtype=torch.float64, device=like.device)
            self.dWs = torch.zeros((self.B, 0) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device)
        grow = need - self.hs.shape[1]
        if grow > 0:
            self.hs = torch.cat([self.hs, self.hs.new_zeros(self.B, grow)], 1)
            self.dWs = torch.cat([self.dWs, self.dWs.new_zeros((self.B, grow) + tuple(self.dWs.shape[2:]))], 1)

    def propose(self, idx, ta, t1a, last, target, like, noise):
        """(t1, last, noise) for the attempts of the active rows (``idx``; None: all)."""
        n = ta.shape[0]
        h = t1a - ta
        dW = torch.empty_like(like)
        depth = None if self.hs is None else (self.depth if idx is None else self.depth[idx])
        has = torch.zeros(n, dtype=torch.bool, device=ta.device) if depth is None else depth > 0
        fresh = ~has
        if bool(fresh.any()):
            rows = torch.nonzero(fresh).flatten()
            z = noise[rows].normal(like[rows], 0) if rows.numel() < n else noise.normal(like, 0)
            dW[rows] = per_sample(h[rows].abs().sqrt(), z) * z
        if bool(has.any()):
            rows = torch.nonzero(has).flatten()
            g = rows if idx is None else idx[rows]
            top = depth[rows] - 1
            hs, dWs = self.hs[g, top], self.dWs[g, top]
            # a remainder within rounding of zero is no remainder: use the interval whole
            split = h[rows].abs() < hs.abs() - self.tol
            whole = ~split
            if bool(whole.any()):
                wr = rows[whole]
                h[wr] = hs[whole]
                dW[wr] = dWs[whole]
                self.depth[g[whole]] -= 1
                last[wr] = (ta[wr] + hs[whole] - target[wr]).abs() <= self.tol
            if bool(split.any()):
                sr, gs, ts = rows[split], g[split], top[split]
                q = h[sr] / hs[split]
                xi = noise[sr].normal(like[sr], Draw.BRIDGE)
                part = per_sample(q, xi) * dWs[split] + per_sample((h[sr].abs() * (1 - q)).sqrt(), xi) * xi
                dW[sr] = part
                self.hs[gs, ts] = hs[split] - h[sr]
                self.dWs[gs, ts] = dWs[split] - part
                last[sr] = False
        t1 = torch.where(last, target, ta + h)
        self._h, self._dW = t1 - ta, dW
        z = dW / per_sample(self._h.abs().sqrt(), dW)
        return t1, last, StepNoise(z, noise)

    def reject(self, idx, rejected):
        """Push the increments of the rejected attempts back on their samples' stacks."""
        if not bool(rejected.any()):
            return
        rows = torch.nonzero(rejected).flatten()
        self._ensure(self._dW, 0)
        g = rows if idx is None else idx[rows]
        self._ensure(self._dW, int(self.depth[g].max()) + 1)
        d = self.depth[g]
        self.hs[g, d] = self._h[rows]
        self.dWs[g, d] = self._dW[rows].to(self.dWs.dtype)
        self.depth[g] += 1
