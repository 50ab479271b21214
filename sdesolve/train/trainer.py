"""The training loop: AdamW, linear learning-rate warm-up, gradient clipping, EMA, checkpoints,
exact resume and data-parallel training.

One step (``step`` counts completed steps, from 0):

    idx      = randint(N, (batch_size,), data generator)        global batch, with replacement
    (t, z)   = loss.draw(data[idx], noise generator)             all randomness of the global batch
    rank r of W takes samples [r B / W, (r + 1) B / W) and computes the mean loss over them;
    DistributedDataParallel averages the gradients over ranks, which is the gradient of the mean
    over the global batch, so W processes take the same step as one (up to float rounding).
    lr       = lr_max min(1, (step + 1) / warmup)
    clip the global gradient norm to ``grad_clip``; AdamW step; EMA update.

``history`` holds [step, mean loss of the last ``log_every`` steps] at every multiple of
``log_every`` (rank 0's shard in data-parallel runs).

Every rank holds the same generators (seeded alike, drawn alike), so rank 0's checkpoint
restores every rank. (Dropout, off by default, draws from torch's global RNG per rank, so
data-parallel runs with dropout match a single process only in distribution.) Resuming restores weights, EMA, optimizer, all generator states and the
step, so a resumed run continues bit for bit on the same machine and thread count.

Data-parallel runs start under ``torchrun``: with WORLD_SIZE > 1 in the environment the trainer
joins the process group (gloo on CPU, NCCL on CUDA) unless the caller already did.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointError, find_checkpoint, remove_stale_temporaries, save_checkpoint, TrainedModel
from .data import Scaling, fingerprint
from .ema import EMA
from .spec import describe

__all__ = ["TrainConfig", "Trainer"]


@dataclass
class TrainConfig:
    """Optimization settings. ``steps`` and ``ckpt_every`` may change when resuming; the rest
    must match the checkpoint."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    ckpt_every: int = 500
    log_every: int = 50
    seed: int = 0

    _resumable = ("steps", "ckpt_every", "log_every")

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("steps", "batch_size", "ckpt_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.warmup >= 0 and self.grad_clip > 0):
            raise ValueError(f"TrainConfig: need lr > 0, warmup >= 0, grad_clip > 0, got lr={self.lr}, "
                             f"warmup={self.warmup}, grad_clip={self.grad_clip}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def lr_at(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else self.lr


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _world()


class Trainer:
    """Trains ``model`` (the module ``loss`` trains: ``loss.wrap(net)``) on ``data`` (already in
    model space, (N, ...)) and writes checkpoints to ``out`` (or none if ``out`` is None).

    ``scaling`` maps model space back to data space and is recorded; ``source`` names where the
    data came from (recorded, so a resumed run can reload it)."""

    def __init__(self, model: nn.Module, loss, data: torch.Tensor, config: TrainConfig | None = None,
                 out=None, scaling: Scaling | None = None, source: str = "", device=None, progress: bool = False):
        config = config if config is not None else TrainConfig()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.rank, self.world = init_distributed(self.device)
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.world} processes")
        if data.dim() < 2 or not data.is_floating_point():
            raise ValueError(f"data must be a float tensor of samples (N, ...), got {data.dtype} {tuple(data.shape)}")
        self.model, self.loss, self.data, self.config = model.to(self.device), loss, data.cpu(), config
        self.out = Path(out) if out is not None else None
        self.scaling = scaling if scaling is not None else Scaling(torch.tensor(0.0), 1.0)
        self.progress = progress
        self.data_info = {"source": str(source), "shape": list(data.shape[1:]), "size": int(data.shape[0]),
                          "fingerprint": fingerprint(self.data)}
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if
                                                        self.device.type == "cuda" else None)
                    if self.world > 1 else self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 0x9E3779B9)
        self.step, self.history, self.resumed_from, self.last_loss = 0, [], None, float("nan")
        self._window = [0.0, 0]  # sum and count of the losses since the last history entry

    # --- checkpoints ----------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"model": describe(self.model), "loss": describe(self.loss), "scaling": self.scaling.state_dict(),
                "data": self.data_info, "train": self.config.as_dict()}

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(),
                        "noise": self.noise_gen.get_state()},
                "config": self.describe(), "history": [list(h) for h in self.history],
                "log_window": list(self._window)}

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0 only; every rank waits for it)."""
        path = None
        if self.out is not None and self.rank == 0:
            path = save_checkpoint(self.state_dict(), self.out)
        if self.world > 1:
            dist.barrier()
        return path

    def _check_matches(self, file, cfg: dict) -> None:
        mine = self.describe()
        for key in ("model", "loss", "data"):
            theirs, ours = cfg[key], mine[key]
            if key == "data":
                theirs, ours = {k: theirs.get(k) for k in ("shape", "size", "fingerprint")}, \
                    {k: ours[k] for k in ("shape", "size", "fingerprint")}
            if theirs != ours:
                raise CheckpointError(file, f"was written for a different {key}: checkpoint has {theirs}, "
                                            f"this run has {ours}")
        for k, v in mine["train"].items():
            if k not in TrainConfig._resumable and cfg["train"].get(k) != v:
                raise CheckpointError(file, f"was written with {k}={cfg['train'].get(k)!r}, this run asks "
                                            f"{k}={v!r}; only {', '.join(TrainConfig._resumable)} may change on resume")

    def resume(self, path) -> Path:
        """Continue from a checkpoint file or directory (``last.pt``, else ``prev.pt``)."""
        file, ckpt = find_checkpoint(path, map_location="cpu")
        self._check_matches(file, ckpt["config"])
        try:
            self.model.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            self.data_gen.set_state(ckpt["rng"]["data"])
            self.noise_gen.set_state(ckpt["rng"]["noise"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(file, f"does not fit this model or optimizer: {e}") from None
        self.ema.shadow = {k: v.to(self.device) for k, v in self.ema.shadow.items()}
        self.step, self.history = int(ckpt["step"]), [list(h) for h in ckpt["history"]]
        window = ckpt.get("log_window", [0.0, 0])  # absent from older checkpoints
        self._window = [float(window[0]), int(window[1])]
        self.resumed_from = file
        return file

    # --- training -------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step; returns this rank's loss."""
        cfg, n = self.config, self.data.shape[0]
        idx = torch.randint(n, (cfg.batch_size,), generator=self.data_gen)
        x0 = self.data[idx]
        t, z = self.loss.draw(x0, self.noise_gen)
        b = cfg.batch_size // self.world
        shard = slice(self.rank * b, (self.rank + 1) * b)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss.compute(self.ddp, x0[shard].to(self.device), t[shard], z[shard].to(self.device))
        value = self.last_loss = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value} at step {self.step + 1} (rank {self.rank}); "
                                     f"lower the learning rate or check the data scaling")
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return value

    def train(self, on_checkpoint=None) -> TrainedModel:
        """Run until ``config.steps``; checkpoint every ``ckpt_every`` steps and at the end.
        ``on_checkpoint(step, path)`` is called after each checkpoint is written."""
        cfg = self.config
        if self.out is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
        self.model.train()
        bar = None
        if self.progress and self.rank == 0 and self.step < cfg.steps:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
            except ImportError:
                bar = None
        start = time.perf_counter()
        while self.step < cfg.steps:
            value = self.train_step()
            running, count = self._window[0] + value, self._window[1] + 1
            self._window = [running, count]
            if self.step % cfg.log_every == 0:
                self.history.append([self.step, running / count])
                if bar is not None:
                    bar.set_postfix(loss=f"{running / count:.4f}")
                self._window = [0.0, 0]
            if bar is not None:
                bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                path = self.save()
                if on_checkpoint is not None:
                    on_checkpoint(self.step, path)
        if bar is not None:
            bar.close()
        self.wall_time = time.perf_counter() - start
        return self.trained()

    def trained(self, ema: bool = True) -> TrainedModel:
        """The trained module (a copy with the EMA weights if ``ema``) and its training setup."""
        model = self.ema.averaged(self.model) if ema else self.model
        return TrainedModel(model.eval(), self.loss, self.scaling, tuple(self.data.shape[1:]), self.step,
                            self.describe(), self.out / "last.pt" if self.out is not None else None)
