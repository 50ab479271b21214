"""Plain-data descriptions of the objects a training run is made of, and their reconstruction.

A checkpoint must say which process, parametrization, loss, time label and network it was
trained with, in a form ``torch.load(weights_only=True)`` accepts (dicts, lists, strings,
numbers). :func:`describe` turns an object into

    {"class": "<module>:<qualname>", "args": {constructor argument: description, ...}}

reading each constructor argument back from the attribute of the same name (processes, losses
and parametrizations keep their arguments that way) or, for a network, from its ``config`` dict.
Time labels from :class:`sdesolve.scores.labels` are described by name (``"continuous"``,
``"sigma"``, ``"edm_c_noise"``, ``"discrete(1000)"``). :func:`build` inverts it, and constructs
only subclasses of Process, Parametrization, Loss and ``nn.Module``, so a checkpoint cannot
name an arbitrary callable (it can still name any importable module of such classes).
"""
from __future__ import annotations

import importlib
import inspect
import re

from torch import nn

from ..processes import Process
from ..scores import labels
from .arguments import constructor_arguments

__all__ = ["describe", "build", "describe_label", "build_label"]


def _buildable():
    from .losses import Loss, Parametrization
    return (Process, Parametrization, Loss, nn.Module)


def describe_label(fn) -> str:
    name = getattr(fn, "__name__", None)
    if name is None or not (re.fullmatch(r"discrete\(\d+\)", name) or getattr(labels, name, None) is fn):
        raise ValueError(f"time label {fn!r} is not one of sdesolve.labels' conventions; a checkpoint "
                         f"can only record those (continuous, sigma, edm_c_noise, discrete(N))")
    return name


def build_label(name: str):
    m = re.fullmatch(r"discrete\((\d+)\)", name)
    if m:
        return labels.discrete(int(m.group(1)))
    fn = getattr(labels, name, None)
    if fn is None or name.startswith("_"):
        raise ValueError(f"unknown time label {name!r}")
    return fn


_args_of = constructor_arguments


def describe(obj):
    """A description of ``obj`` made only of dicts, lists, strings, numbers, bools and None."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if inspect.isfunction(obj):
        return {"label": describe_label(obj)}
    if isinstance(obj, _buildable()):
        cls = type(obj)
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "args": describe(_args_of(obj))}
    raise TypeError(f"cannot describe an object of type {type(obj).__name__} for a checkpoint")


def build(desc):
    """The object a :func:`describe` description stands for."""
    if isinstance(desc, list):
        return [build(v) for v in desc]
    if not isinstance(desc, dict):
        return desc
    if set(desc) == {"label"}:
        return build_label(desc["label"])
    if set(desc) != {"class", "args"}:
        return {k: build(v) for k, v in desc.items()}
    module, _, qualname = desc["class"].partition(":")
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot find class {desc['class']!r}: {e}") from None
    if not (inspect.isclass(cls) and issubclass(cls, _buildable())):
        raise ValueError(f"{desc['class']!r} is not a process, loss, parametrization or network class")
    return cls(**{k: build(v) for k, v in desc["args"].items()})
