"""Plain-data descriptions of the objects a training run is made of, and their reconstruction.

A checkpoint must say which process, parametrization, loss, time label and network it was
trained with, in a form ``torch.load(weights_only=True)`` accepts (dicts, lists, strings,
numbers). :func:`describe` turns an object into

    {"class": "<module>:<qualname>", "args": {constructor argument: description, ...}}

reading each constructor argument back from the attribute of the same name (processes, losses
and parametrizations keep their arguments that way) or, for a network, from its ``config`` dict.
Time labels from :class:`sdesolve.scores.labels` are described by name (``"continuous"``,
``"sigma"``, ``"edm_c_noise"``, ``"discrete(1000)"``). :func:`build` inverts it.

No file chooses code: :func:`build` looks the ``"class"`` string up in an explicit table of the
project's own classes (:func:`known_classes`) and never imports a module or resolves an attribute
named in a file. A class of the user's own (a network defined in their script) is rebuilt only
when the caller passes it in ``classes=``; anything else is refused with the list of known names.
"""
from __future__ import annotations

import inspect
import re

from torch import nn

from ..processes import Process
from ..scores import labels
from .arguments import constructor_arguments

__all__ = ["describe", "build", "describe_label", "build_label", "known_classes", "class_name"]


def _buildable():
    from .losses import Loss, Parametrization
    return (Process, Parametrization, Loss, nn.Module)


def class_name(cls) -> str:
    """The name a description records for ``cls``: ``"<module>:<qualname>"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def known_classes() -> dict:
    """The project's own classes a checkpoint may name, by :func:`class_name`: processes,
    parametrizations, losses and networks. This table is the only way from a name to code."""
    from ..paths import CosinePath, RectifiedFlow, TimeShift
    from ..processes import EDM, VESDE, VPSDE, SubVPSDE
    from .flow import ConditionalFlowMatching, OTConditionalFlowMatching
    from .losses import (DenoisingScoreMatching, EDMLoss, EpsPrediction, LikelihoodWeighted, ScorePrediction,
                         VPrediction, X0Prediction)
    from .models import MLP, SinusoidalEmbedding, UNet
    from .models.edm import EDMPrecond
    classes = (VPSDE, SubVPSDE, VESDE, EDM, RectifiedFlow, CosinePath, TimeShift,
               ScorePrediction, EpsPrediction, X0Prediction, VPrediction,
               DenoisingScoreMatching, LikelihoodWeighted, EDMLoss, ConditionalFlowMatching, OTConditionalFlowMatching,
               MLP, UNet, EDMPrecond, SinusoidalEmbedding)
    return {class_name(c): c for c in classes}


def describe_label(fn) -> str:
    name = getattr(fn, "__name__", None)
    if name is None or not (re.fullmatch(r"discrete\(\d+\)", name) or (name in _LABELS and getattr(labels, name) is fn)):
        raise ValueError(f"time label {fn!r} is not one of sdesolve.labels' conventions; a checkpoint "
                         f"can only record those (continuous, sigma, edm_c_noise, discrete(N))")
    return name


_LABELS = ("continuous", "sigma", "edm_c_noise")


def build_label(name: str):
    """The time label called ``name`` (one of continuous, sigma, edm_c_noise, discrete(N))."""
    m = re.fullmatch(r"discrete\((\d+)\)", name) if isinstance(name, str) else None
    if m:
        return labels.discrete(int(m.group(1)))
    if name not in _LABELS:
        raise ValueError(f"unknown time label {name!r} (known: {', '.join(_LABELS)}, discrete(N))")
    return getattr(labels, name)


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
        return {"class": class_name(cls), "args": describe(_args_of(obj))}
    raise TypeError(f"cannot describe an object of type {type(obj).__name__} for a checkpoint")


def build(desc, classes=()):
    """The object a :func:`describe` description stands for.

    Class names are resolved only through :func:`known_classes` and the classes passed in
    ``classes`` (an iterable of classes the caller trusts); a name not in that table is a
    ``ValueError``, and nothing named in ``desc`` is ever imported."""
    table = known_classes()
    table.update({class_name(c): c for c in classes})
    return _build(desc, table)


def _build(desc, table):
    if isinstance(desc, list):
        return [_build(v, table) for v in desc]
    if not isinstance(desc, dict):
        return desc
    if set(desc) == {"label"}:
        return build_label(desc["label"])
    if set(desc) != {"class", "args"}:
        return {k: _build(v, table) for k, v in desc.items()}
    name, args = desc["class"], desc["args"]
    cls = table.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"class {name!r} is not one of sdesolve's own classes ({', '.join(sorted(table))}); "
                         f"a checkpoint cannot name other code (pass your own class in classes= to rebuild it)")
    if not (inspect.isclass(cls) and issubclass(cls, _buildable())):
        raise ValueError(f"{name!r} is not a process, loss, parametrization or network class")
    if not isinstance(args, dict):
        raise ValueError(f"class {name!r}: its arguments must be a dict, got {type(args).__name__}")
    return cls(**{k: _build(v, table) for k, v in args.items()})
