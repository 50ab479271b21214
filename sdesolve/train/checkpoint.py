"""Training checkpoints: atomic writes, validated reads, and the trained model they hold.

A checkpoint directory holds ``last.pt`` and ``prev.pt`` (the one before). A save writes a
temporary file in the same directory, flushes and fsyncs it, renames ``last.pt`` to
``prev.pt`` and the temporary file to ``last.pt`` (``os.replace``, atomic on POSIX), then fsyncs
the directory. A crash at any point leaves at least one complete checkpoint: the temporary file
is what a crash truncates, and between the two renames ``prev.pt`` is complete.

A checkpoint is a ``torch.save`` dict readable with ``weights_only=True``:

    format      "sdesolve.train/1"
    step        optimizer steps taken
    model       state dict of the trained module (an EDMPrecond wraps its network)
    ema         EMA state (decay, warm-up flag, updates, shadow weights)
    optimizer   AdamW state
    rng         torch's global CPU RNG state and the data-sampling and loss-noise generators
    config      model: description of the module (class + constructor arguments, nested)
                loss: description of the loss (with its process, parametrization, time label)
                scaling: data <-> model affine map and data range
                data: source, sample shape, size, fingerprint
                train: the TrainConfig
    history     [step, loss] pairs logged so far
    digest      SHA-256 of everything above (tensor dtypes, shapes and bytes; every other value's
                repr), in a fixed traversal order; :func:`payload_digest`

:func:`load_checkpoint` recomputes the digest, so flipped bytes inside tensor data (which the zip
container does not check) are refused. A save rotates ``last.pt`` to ``prev.pt`` only when
``last.pt`` is itself a good checkpoint: after a fall-back to ``prev.pt`` the corrupt ``last.pt``
is overwritten, never rotated over the good one.

:func:`load_checkpoint` refuses a truncated or corrupted file, a file of another format, or one
missing a field, with a :class:`CheckpointError` naming the file and the problem;
:func:`load_trained` rebuilds the network (with EMA weights by default) and its ``Score``.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..scores import Score
from .data import Scaling
from .spec import build

__all__ = ["CheckpointError", "payload_digest", "save_checkpoint", "load_checkpoint", "find_checkpoint", "load_trained",
           "score_from_checkpoint", "remove_stale_temporaries", "TrainedModel", "FORMAT", "LAST", "PREV"]

FORMAT = "sdesolve.train/1"
LAST, PREV = "last.pt", "prev.pt"
_TMP_PREFIX = ".tmp-"
_REQUIRED = ("step", "model", "ema", "optimizer", "rng", "config", "history")
_REQUIRED_CONFIG = ("model", "loss", "scaling", "data", "train")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"checkpoint {path}: {problem}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k in sorted(obj, key=repr):
            h.update(f"{k!r}=".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}|".encode())


def payload_digest(state: dict) -> str:
    """SHA-256 of a checkpoint's content (all fields but ``format`` and ``digest``)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k not in ("format", "digest")})
    return h.hexdigest()


def save_checkpoint(state: dict, directory) -> Path:
    """Write ``state`` atomically as ``directory/last.pt`` with its payload digest, keeping the
    previous one as ``prev.pt`` (only if it is a good checkpoint: a damaged ``last.pt`` is
    replaced, never rotated over ``prev.pt``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{LAST}"
    state = {k: v for k, v in state.items() if k not in ("format", "digest")}
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state, format=FORMAT, digest=payload_digest(state)), f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # a full disk reaches torch.save as a RuntimeError
            import shutil
            try:
                free = f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free there"
            except OSError:
                free = "free space unknown"
            detail = (getattr(e, "strerror", None) or str(e).splitlines()[0]) if str(e) else type(e).__name__
            raise CheckpointError(directory / LAST, f"could not be written ({detail}; {free}); the previous "
                                                    f"checkpoints are unchanged") from None
        raise
    last = directory / LAST
    if last.exists():
        try:
            load_checkpoint(last)
        except CheckpointError as e:
            warnings.warn(f"{e}; replacing it, keeping {directory / PREV}", stacklevel=2)
        else:
            os.replace(last, directory / PREV)
    os.replace(tmp, last)
    _fsync_dir(directory)
    return last


def remove_stale_temporaries(directory) -> None:
    """Delete temporary files a crashed save left behind."""
    for p in Path(directory).glob(f"{_TMP_PREFIX}*"):
        p.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and validate one checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle/zip errors, ... on damage
        raise CheckpointError(path, f"truncated or corrupted, cannot be read ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(path, f"not an sdesolve training checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in ckpt] + \
              [f"config.{k}" for k in _REQUIRED_CONFIG if k not in ckpt.get("config", {})]
    if missing:
        raise CheckpointError(path, f"incomplete, missing {', '.join(missing)}")
    if "digest" not in ckpt:
        warnings.warn(f"checkpoint {path}: written without a payload digest (an older sdesolve); its "
                      f"integrity cannot be checked", stacklevel=2)
    elif ckpt["digest"] != payload_digest(ckpt):
        raise CheckpointError(path, "corrupted: its content does not match the digest stored with it")
    return ckpt


def find_checkpoint(path, map_location="cpu") -> tuple[Path, dict]:
    """(file, checkpoint) for a checkpoint file, or for a directory its ``last.pt``, falling back
    to ``prev.pt`` (with a warning naming the problem) when ``last.pt`` is missing or damaged."""
    path = Path(path)
    if not path.is_dir():
        return path, load_checkpoint(path, map_location)
    problems = []
    for name in (LAST, PREV):
        try:
            ckpt = load_checkpoint(path / name, map_location)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; using {path / name} (step {ckpt['step']}) instead", stacklevel=2)
        return path / name, ckpt
    raise CheckpointError(path, "no usable checkpoint in this directory: " + "; ".join(problems))


@dataclass
class TrainedModel:
    """A trained module with what it was trained with. ``score()`` is its :class:`Score`."""

    model: nn.Module
    loss: object
    scaling: Scaling
    sample_shape: tuple
    step: int
    config: dict
    path: Path | None = None

    @property
    def process(self):
        return self.loss.process

    def score(self) -> Score:
        return self.loss.score(self.model)

    def to_data(self, y: torch.Tensor) -> torch.Tensor:
        """Samples in model space mapped back to data space (clipped to the data range for images)."""
        return self.scaling.to_data(y)


def load_trained(path, ema: bool = True, map_location="cpu", classes=()) -> TrainedModel:
    """The module saved in a checkpoint file or directory, with its EMA weights (``ema=True``) or
    its raw weights, in eval mode. Classes are rebuilt from the project's own table
    (:func:`sdesolve.train.spec.known_classes`) plus the classes passed in ``classes``."""
    file, ckpt = find_checkpoint(path, map_location)
    cfg = ckpt["config"]
    try:
        model, loss = build(cfg["model"], classes), build(cfg["loss"], classes)
        model.load_state_dict(ckpt["model"])
        if ema:
            shadow = ckpt["ema"]["shadow"]
            model.load_state_dict({k: v.to(ckpt["model"][k].dtype) for k, v in shadow.items()})
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(file, f"cannot rebuild the trained model: {e}") from None
    return TrainedModel(model.eval(), loss, Scaling.from_state_dict(cfg["scaling"]),
                        tuple(cfg["data"]["shape"]), int(ckpt["step"]), cfg, file)


def score_from_checkpoint(path, ema: bool = True, map_location="cpu") -> Score:
    """The score of the model in a checkpoint (a ``Score`` bound to the training process)."""
    return load_trained(path, ema, map_location).score()
