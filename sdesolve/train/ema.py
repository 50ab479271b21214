"""Exponential moving average of a model's weights.

After the n-th optimizer step (n = 1, 2, ...) every floating-point parameter and buffer is
updated as

    shadow <- d_n shadow + (1 - d_n) param,    d_n = min(decay, (1 + n) / (10 + n))

The warm-up factor (1 + n) / (10 + n) (as in TensorFlow's ExponentialMovingAverage with
``num_updates``) is 0.1 at n = 0, so the average forgets its random initialization within a few
steps instead of ~1 / (1 - decay) of them; it reaches ``decay`` = 0.999 after about 9000 steps.
Without warm-up, d_n = decay throughout. The shadow is kept in float32 (float64 for float64
parameters) on the model's device; non-float buffers are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.shadow = {k: v.detach().clone().to(torch.promote_types(v.dtype, torch.float32)) if v.is_floating_point()
                       else v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The d_n the next update uses."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().to(s.dtype), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Load the averaged weights into ``model`` (in place) and return it."""
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return model

    def averaged(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` holding the averaged weights."""
        return self.copy_to(copy.deepcopy(model))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            missing, extra = set(self.shadow) - set(state["shadow"]), set(state["shadow"]) - set(self.shadow)
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self.decay, self.warmup, self.updates = float(state["decay"]), bool(state["warmup"]), int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
