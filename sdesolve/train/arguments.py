"""The constructor arguments of an object, as a checkpoint records them."""
from __future__ import annotations

import inspect

from torch import nn

__all__ = ["constructor_arguments"]


def constructor_arguments(obj) -> dict:
    """{name: value} of the arguments ``obj`` was built with: a module's ``config`` dict, or the
    attributes named like the parameters of its ``__init__``."""
    if isinstance(obj, nn.Module):
        if not isinstance(getattr(obj, "config", None), dict):
            raise ValueError(f"{type(obj).__name__} has no `config` dict of its constructor arguments, so a "
                             f"checkpoint cannot rebuild it")
        return obj.config
    args = {}
    for name, p in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(obj, name):
            raise ValueError(f"{type(obj).__name__} does not keep its constructor argument {name!r} as an "
                             f"attribute, so it cannot be described")
        args[name] = getattr(obj, name)
    return args
