"""The ``sdesolve`` command line.

    sdesolve train  --data DATA --model mlp|unet --process vp|subvp|ve|edm --steps N --out DIR
    sdesolve sample --checkpoint DIR --solver NAME[:key=value,...] --nfe N --n COUNT --seed S --out FILE
    sdesolve bench  --checkpoint DIR | --gmm NAME|FILE.json --solvers LIST --nfe LIST --n COUNT --seed S --out DIR
                    [--metrics LIST] [--features NET] [--work-precision] [--optimized-grids dp,learned]
                    [--optimized-nfe LIST] [--optimized-solvers LIST]
    sdesolve likelihood --checkpoint DIR --data FILE|DATASET [--solver dopri5:rtol=1e-5,atol=1e-5] [--trace exact]
    sdesolve schedule --checkpoint DIR | --gmm NAME --solver SPEC --nfe N --method dp|learned --out grid.pt

``sample`` and ``bench`` shard their samples over the ranks of a ``torchrun`` job (rank r takes
global sample indices [r n / W, (r + 1) n / W); see :mod:`sdesolve.bench.distributed`).

One parser with one function per subcommand (``cmd_<name>``); :data:`TABLE` is the only place
where names become objects. Solvers are looked up by class name, case-insensitive, among the
:class:`~sdesolve.solvers.base.Solver` subclasses that ``sdesolve`` exports, with constructor
arguments after a colon: ``dpmsolverpp:order=3``, ``dopri5:rtol=1e-4,atol=1e-4`` (values are
parsed as int, float or bool when they look like one, and as a solver when they name one:
``predictorcorrector:predictor=reversediffusion``).
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from pathlib import Path

import torch

import sdesolve
from .paths import CosinePath, RectifiedFlow
from .processes import EDM, SubVPSDE, VESDE, VPSDE
from .fileio import WriteError, atomic_write
from .solvers import tableaus as _tab
from .solvers.base import Solver
from .train import data as datasets
from .train.checkpoint import CheckpointError, find_checkpoint, load_trained, LAST, PREV
from .train.losses import (DenoisingScoreMatching, EDMLoss, EpsPrediction, LikelihoodWeighted, ScorePrediction,
                           VPrediction, X0Prediction)
from .train.flow import ConditionalFlowMatching, OTConditionalFlowMatching
from .train.models import MLP, UNet
from .train.spec import build
from .train.trainer import TrainConfig, Trainer
from .bench import peers as bench_peers, problems as bench_problems
from . import grid_optimization as gridopt
from .likelihood import ExactTrace, Hutchinson
from .metrics import DigitsClassifierFeatures, MnistClassifierFeatures

__all__ = ["main", "build_parser", "TABLE", "solver_from_spec", "parse_value", "peer_from_spec"]


def _toy(fn):
    def load(n, generator):
        return fn(n, generator)
    load.__name__ = fn.__name__
    return load


def _digits(n, generator):
    return datasets.load_digits("train")[0]


def _mnist(n, generator):
    return datasets.load_mnist("train")[0]


def _solvers() -> dict:
    """Every public solver class, by lower-case name; the conditioning hooks of
    :mod:`sdesolve.guidance` wrap a solver around tensors (known pixels, masks) and cannot be
    built from a string, so they are left out."""
    out = {}
    for name in getattr(sdesolve, "__all__", []):
        obj = getattr(sdesolve, name, None)
        if (inspect.isclass(obj) and issubclass(obj, Solver) and obj is not Solver and not inspect.isabstract(obj)
                and obj.__module__ != "sdesolve.guidance"):
            out[name.lower()] = obj
    return out


#: names on the command line -> objects
TABLE = {
    "data": {"gmm2d": _toy(datasets.gmm2d), "moons": _toy(datasets.moons), "swissroll": _toy(datasets.swissroll),
             "checkerboard": _toy(datasets.checkerboard), "digits": _digits, "mnist": _mnist},
    "model": {"mlp": MLP, "unet": UNet},
    "process": {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDM, "rectified-flow": RectifiedFlow,
                "cosine": CosinePath},
    "loss": {"dsm": DenoisingScoreMatching, "likelihood": LikelihoodWeighted, "edm": EDMLoss,
             "cfm": ConditionalFlowMatching, "ot-cfm": OTConditionalFlowMatching},
    "param": {"eps": EpsPrediction, "score": ScorePrediction, "x0": X0Prediction, "v": VPrediction},
    "solver": _solvers(),
    "corrector": {"langevin": sdesolve.Langevin},
    "tableau": {"euler": _tab.EULER, "heun": _tab.HEUN, "midpoint": _tab.MIDPOINT, "rk4": _tab.RK4,
                "bosh3": _tab.BOSH3, "dopri5": _tab.DOPRI5, "tsit5": _tab.TSIT5},
    "gmm": {"ring8": bench_problems.ring8, "gmm8d": bench_problems.gmm8d},
    "peer": {"kdiffusion": bench_peers.KDiffusion, "diffusers-ddim": bench_peers.Diffusers.ddim,
             "diffusers-dpmsolvermultistep": bench_peers.Diffusers.dpm_solver_multistep,
             "diffusers-unipc": bench_peers.Diffusers.unipc, "torchdiffeq": bench_peers.Torchdiffeq,
             "diffusers-flowmatch-euler": bench_peers.DiffusersFlow.euler,
             "diffusers-flowmatch-heun": bench_peers.DiffusersFlow.heun,
             "torchsde": bench_peers.Torchsde, "torchode": bench_peers.Torchode},
    "grid_method": {"dp": gridopt.DynamicProgramming, "learned": gridopt.Learned},
    "features": {"digits": DigitsClassifierFeatures, "mnist": MnistClassifierFeatures},
    "trace": {"exact": ExactTrace, "hutchinson": Hutchinson},
}


def _whole(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a whole number {what}, got {value}")
    return value


def _count(text: str) -> int:
    """argparse type of a count: an integer >= 1 (0 and negatives are errors, not defaults)."""
    return _whole(text, 1, ">= 1")


def _natural(text: str) -> int:
    return _whole(text, 0, ">= 0")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (prog: error: message) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _pick(kind: str, name: str):
    try:
        return TABLE[kind][name.lower()]
    except KeyError:
        raise SystemExit(f"sdesolve: unknown {kind} {name!r}; choose one of {', '.join(sorted(TABLE[kind]))}") from None


# --- solver specs ------------------------------------------------------------------------------
def parse_value(text: str):
    """'3' -> 3, '1e-4' -> 0.0001, 'true'/'false' -> bool, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def solver_from_spec(spec: str) -> Solver:
    """A solver object from ``name`` or ``name:key=value,key=value`` (name: class name, any case).
    A value that names a solver becomes that solver with its defaults:
    ``predictorcorrector:predictor=reversediffusion``. ``predictorcorrector`` alone is
    ReverseDiffusion + Langevin; the corrector's arguments go in the same list
    (``predictorcorrector:predictor=eulermaruyama,corrector=langevin,snr=0.1,n_steps=2``).
    ``rungekutta:tableau=NAME`` takes a tableau by name (euler, heun, midpoint, rk4, bosh3, dopri5,
    tsit5)."""
    name, _, rest = spec.partition(":")
    cls = _pick("solver", name.strip())
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"sdesolve: solver argument {item!r} in {spec!r} is not key=value")
        value = parse_value(value)
        if isinstance(value, str) and value.lower() in TABLE["solver"]:
            value = solver_from_spec(value)
        kwargs[key.strip()] = value
    if cls is sdesolve.PredictorCorrector:
        corrector_keys = set(inspect.signature(sdesolve.Langevin).parameters)
        corrector_args = {k: kwargs.pop(k) for k in list(kwargs) if k in corrector_keys}
        corrector = kwargs.get("corrector", "langevin")
        if not isinstance(corrector, str):
            raise SystemExit(f"sdesolve: corrector in {spec!r} must name a corrector "
                             f"({', '.join(sorted(TABLE['corrector']))})")
        try:
            kwargs["corrector"] = _pick("corrector", corrector)(**corrector_args)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"sdesolve: cannot build the corrector of {spec!r}: {e}") from None
        kwargs.setdefault("predictor", TABLE["solver"]["reversediffusion"]())
        if not isinstance(kwargs["predictor"], Solver):
            raise SystemExit(f"sdesolve: predictor in {spec!r} must name a solver, got {kwargs['predictor']!r}")
    if cls is sdesolve.RungeKutta:
        tableau = kwargs.get("tableau")
        if isinstance(tableau, sdesolve.RungeKutta):  # "rk4" also names the solver built on that tableau
            tableau = type(tableau).__name__.lower()
        if not isinstance(tableau, str):
            raise SystemExit(f"sdesolve: rungekutta needs tableau=NAME, one of {', '.join(TABLE['tableau'])}")
        kwargs["tableau"] = _pick("tableau", tableau)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"sdesolve: cannot build {cls.__name__} from {spec!r}: {e}") from None


def steps_for_nfe(solver: Solver, nfe: int) -> int | None:
    """Steps giving about ``nfe`` model evaluations (None for adaptive solvers)."""
    if getattr(solver, "adaptive", False):
        return None
    return max(1, int(nfe) // max(1, int(getattr(solver, "nfe_per_step", 1))))


# --- train -------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def _load_data(source: str, n: int, seed: int) -> tuple[torch.Tensor, str]:
    if source.lower() in TABLE["data"]:
        return TABLE["data"][source.lower()](n, torch.Generator().manual_seed(seed)), source.lower()
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"sdesolve: --data {source!r} is neither a dataset ({', '.join(sorted(TABLE['data']))}) "
                         f"nor an existing file or folder")
    try:
        x = datasets.load_path(path)
    except (ValueError, OSError, EOFError, ImportError) as e:
        raise SystemExit(f"sdesolve: --data {source}: {e}") from None
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise SystemExit(f"sdesolve: --data {source}: holds no samples (shape {tuple(x.shape)})")
    if x.is_floating_point():
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            raise SystemExit(f"sdesolve: --data {source}: NaN or Inf values in {len(rows)} samples "
                             f"(first: {rows[:5]})")
    return x, str(path.resolve())


def _unet_defaults(resolution: int) -> dict:
    """U-Net size by image side: 8 -> 4 -> 2 for 8x8, three levels up to 28/32 pixels."""
    if resolution <= 8:
        return dict(ch=32, mult=(1, 2, 2), blocks=1, attn=(2,))
    if resolution <= 16:
        return dict(ch=64, mult=(1, 2, 2), blocks=2, attn=(4,))
    if resolution % 8 == 0:
        return dict(ch=64, mult=(1, 2, 2, 2), blocks=2, attn=(resolution // 4,))
    return dict(ch=64, mult=(1, 2, 2), blocks=2, attn=(resolution // 4,))


def _build_net(args, shape) -> torch.nn.Module:
    images = len(shape) == 3
    kind = args.model or ("unet" if images else "mlp")
    cls = _pick("model", kind)
    if cls is UNet:
        if not images:
            raise SystemExit(f"sdesolve: --model unet needs images (C, H, W), the data has samples of shape {shape}")
        kw = _unet_defaults(shape[-1])
        if args.channels:
            kw["ch"] = args.channels
        if args.mult:
            kw["mult"] = _int_list(args.mult)
        if args.blocks:
            kw["blocks"] = args.blocks
        if args.attn is not None:
            kw["attn"] = _int_list(args.attn)
        return UNet(in_channels=shape[0], resolution=shape[-1], **kw)
    kw = {}
    if args.hidden:
        kw["hidden"] = args.hidden
    if args.depth:
        kw["depth"] = args.depth
    return cls(shape=shape, **kw)


def _build_loss(args, data: torch.Tensor):
    loss_cls = _pick("loss", args.loss or "dsm")
    flow = issubclass(loss_cls, ConditionalFlowMatching)
    process = _pick("process", args.process or ("rectified-flow" if flow else "vp"))()
    if flow:
        if args.param is not None or args.sigma_data is not None:
            raise SystemExit(f"sdesolve: --loss {args.loss} trains a velocity network; --param/--sigma-data do not apply")
        return loss_cls(process)
    if loss_cls is EDMLoss:
        if args.param is not None:
            raise SystemExit("sdesolve: --loss edm trains an EDM-preconditioned denoiser; --param does not apply")
        sigma_data = args.sigma_data or float(data.double().std())
        return EDMLoss(process, sigma_data=sigma_data)
    return loss_cls(process, _pick("param", args.param or "eps")())


_TRAIN_FIELDS = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "ema": "ema_decay", "warmup": "warmup",
                 "grad_clip": "grad_clip", "ckpt_every": "ckpt_every", "seed": "seed", "weight_decay": "weight_decay"}
_NET_ARGS = ("model", "channels", "mult", "blocks", "attn", "hidden", "depth")
_LOSS_ARGS = ("process", "loss", "param", "sigma_data")


def cmd_train(args) -> int:
    """Train a score network and write checkpoints to --out; with --resume, continue one (settings
    not given on the command line come from the checkpoint)."""
    out = Path(args.out)
    ckpt = ckpt_file = None
    if args.resume is not None:
        where = out if args.resume is True else Path(args.resume)
        try:
            ckpt_file, ckpt = find_checkpoint(where)
        except CheckpointError as e:
            raise SystemExit(f"sdesolve train: {e}") from None
    elif (out / LAST).exists() or (out / PREV).exists():
        raise SystemExit(f"sdesolve train: {out} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")

    _check_writable_dir(out, "train: --out")
    cfg = TrainConfig.from_dict(ckpt["config"]["train"]) if ckpt else TrainConfig()
    updates = {field: getattr(args, a) for a, field in _TRAIN_FIELDS.items() if getattr(args, a) is not None}
    cfg = TrainConfig.from_dict({**cfg.as_dict(), **updates})

    source = args.data or (ckpt["config"]["data"]["source"] if ckpt else None)
    if source is None:
        raise SystemExit("sdesolve train: --data is required")
    n_data = args.n_data or (ckpt["config"]["data"]["size"] if ckpt else 20000)
    raw, source = _load_data(source, n_data, cfg.seed)
    if ckpt:
        scaling = datasets.Scaling.from_state_dict(ckpt["config"]["scaling"])
    else:
        scaling = datasets.fit_scaling(raw)
    data = scaling.to_model(raw)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if ckpt and all(getattr(args, a) is None for a in _LOSS_ARGS):
            loss = build(ckpt["config"]["loss"])
        else:
            loss = _build_loss(args, data)
        if ckpt and all(getattr(args, a) is None for a in _NET_ARGS + _LOSS_ARGS):
            model = build(ckpt["config"]["model"])
        else:
            model = loss.wrap(_build_net(args, tuple(data.shape[1:])))

    # under torchrun on CUDA the Trainer moves each rank to cuda:LOCAL_RANK
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trainer = Trainer(model, loss, data, cfg, out=out, scaling=scaling, source=source, device=device,
                      progress=not args.quiet)
    if ckpt:
        try:
            trainer.resume(ckpt_file)
        except CheckpointError as e:
            raise SystemExit(f"sdesolve train: {e}") from None
        if trainer.step > cfg.steps:
            raise SystemExit(f"sdesolve train: {ckpt_file} is already at step {trainer.step}, past --steps "
                             f"{cfg.steps}: nothing to train (give --steps above {trainer.step} to continue)")
        if trainer.step == cfg.steps:
            print(f"train: {ckpt_file} is already at step {trainer.step} = --steps; nothing to train", flush=True)
            return 0

    def on_checkpoint(step, path):
        if args.stop_after is not None and step >= args.stop_after:
            sys.stdout.flush()
            os._exit(75)  # as abrupt as a kill: no cleanup, no further writes

    if trainer.rank == 0 and not args.quiet:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"train: {source} {tuple(data.shape)} | {type(model).__name__} {n_params} parameters | {loss!r} | "
              f"steps {trainer.step} -> {cfg.steps}, batch {cfg.batch_size} on {trainer.world} process(es)",
              flush=True)
    start = time.perf_counter()
    trainer.train(on_checkpoint=on_checkpoint)
    wall = time.perf_counter() - start
    if trainer.rank == 0:
        logged = f"; mean loss of the last {cfg.log_every} steps {trainer.history[-1][1]:.4f}" if trainer.history else ""
        print(f"trained to step {trainer.step} in {wall:.1f} s; last step's loss {trainer.last_loss:.4f}{logged}; "
              f"checkpoint {out / LAST}", flush=True)
    if trainer.world > 1:
        torch.distributed.destroy_process_group()
    return 0


# --- sample ------------------------------------------------------------------------------------
class _Pretrained:
    """A diffusers ``save_pretrained`` folder, with what ``cmd_sample`` uses of a TrainedModel."""

    def __init__(self, args):
        from .external import ModelCheckError, from_diffusers, load_diffusers
        from .train.data import Scaling

        try:
            self.model, scheduler = load_diffusers(args.diffusers)
            kw = {"class_labels": torch.tensor(args.class_label)} if (
                args.class_label is not None and args.guidance_scale is None) else {}
            self.process, self._score = from_diffusers(self.model, scheduler, check=not args.no_check, **kw)
        except (FileNotFoundError, ModelCheckError, ValueError, TypeError, OSError) as e:
            raise SystemExit(f"sdesolve sample: --diffusers {args.diffusers}: {e}") from None
        cfg = self.model.config
        size = cfg.sample_size if not isinstance(cfg.sample_size, int) else (cfg.sample_size, cfg.sample_size)
        self.sample_shape = (cfg.in_channels, *size)
        self.scaling = Scaling(0.0, 1.0, None)  # diffusers models sample in their own space

    def score(self):
        return self._score

    def to_data(self, y):
        return y


def _controls(args, trained, score, solver):
    """Classifier-free guidance (--guidance-scale) and inpainting (--mask, --known) around the
    score and the solver."""
    from .guidance import ClassifierFreeGuidance, Inpaint

    if args.guidance_scale is not None:
        if not args.diffusers or args.class_label is None or args.null_label is None:
            raise SystemExit("sdesolve sample: --guidance-scale needs a class-conditional --diffusers model, "
                             "--class-label and --null-label (the label it was trained with for 'no class')")
        score = ClassifierFreeGuidance(score, args.class_label, args.null_label, args.guidance_scale,
                                       keyword="class_labels")
    elif args.class_label is not None and not args.diffusers:
        raise SystemExit("sdesolve sample: --class-label needs a class-conditional --diffusers model")
    if (args.mask is None) != (args.known is None):
        raise SystemExit("sdesolve sample: inpainting needs both --mask and --known")
    if args.mask is not None:
        import numpy as np

        known = trained.scaling.to_model(torch.from_numpy(np.load(args.known)).float())
        mask = torch.from_numpy(np.load(args.mask))
        try:
            torch.broadcast_shapes(known.shape, mask.shape, trained.sample_shape)
            solver = Inpaint(solver, known, mask)
        except (RuntimeError, TypeError, ValueError) as e:
            raise SystemExit(f"sdesolve sample: --mask / --known must be one sample of shape "
                             f"{tuple(trained.sample_shape)} (or broadcast to it): {e}") from None
    return score, solver


def cmd_sample(args) -> int:
    """Sample from a trained checkpoint with any solver; write .npy (data space) or a .png grid."""
    from .train.images import save_image_grid

    if args.diffusers:
        trained = _Pretrained(args)
    else:
        try:
            trained = load_trained(args.checkpoint, ema=not args.raw_weights)
        except CheckpointError as e:
            raise SystemExit(f"sdesolve sample: {e}") from None
    solver = solver_from_spec(args.solver)
    steps = args.steps if args.steps is not None else steps_for_nfe(solver, args.nfe)
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise SystemExit(f"sdesolve sample: --out {out} must end in .npy (arrays) or .png (an image grid)")
    _check_writable_dir(out.parent, "sample: --out")
    images = len(trained.sample_shape) == 3
    if out.suffix == ".png" and not images:
        raise SystemExit(f"sdesolve sample: samples of shape {trained.sample_shape} are not images; use .npy")
    from .bench import distributed as bdist

    device = bdist.local_device(args.device or "cpu")
    rank, world = bdist.init(device)
    trained.model.to(device)
    score, process = trained.score(), trained.process
    score, solver = _controls(args, trained, score, solver)
    schedule = _grid_file(args.schedule, "sample") if args.schedule else None
    shard_lo, shard_hi = bdist.shard(args.n)  # this rank's global sample indices
    chunks, nfe, start = [torch.zeros((0, *trained.sample_shape))], 0, time.perf_counter()
    with torch.no_grad():
        for lo in range(shard_lo, shard_hi, args.batch):
            b = min(args.batch, shard_hi - lo)
            sol = sdesolve.sample(process, score, solver, shape=(b, *trained.sample_shape), steps=steps,
                                  schedule=schedule, seed=args.seed, sample_offset=lo, device=device)
            chunks.append(trained.to_data(sol.y.float()).cpu())
            nfe += int(sol.stats.nfe)
    y = bdist.gather(torch.cat(chunks))  # all samples in global order
    nfe = int(bdist.all_sum(torch.tensor([nfe]))[0])
    wall = bdist.all_max(time.perf_counter() - start)
    if rank != 0:
        bdist.finish()
        return 0
    if out.suffix == ".npy":
        import numpy as np

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, y.numpy())
        atomic_write(out, write)
    else:
        rng = trained.scaling.data_range or (float(y.min()), float(y.max()))
        atomic_write(out, lambda tmp: save_image_grid(y, tmp, data_range=rng,
                                                      upscale=max(1, 64 // trained.sample_shape[-1])))
    print(f"sampled {args.n} x {tuple(trained.sample_shape)} with {type(solver).__name__} "
          f"({'adaptive' if steps is None else f'{steps} steps'}, {nfe} model calls"
          f"{f' on {world} processes' if world > 1 else ''}) in {wall:.1f} s -> {out}")
    bdist.finish()
    return 0


# --- bench -------------------------------------------------------------------------------------
def _spec_list(text: str) -> list[str]:
    """Split 'euler,dpmsolverpp:order=3,multistep=false,heun' into solver specs: a comma starts a
    new spec unless what follows is a key=value argument of the previous one."""
    specs = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if specs and "=" in tok and ":" not in tok.split("=", 1)[0]:
            specs[-1] += "," + tok
        else:
            specs.append(tok)
    return specs


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.replace(" ", "").split(",") if v]


def peer_from_spec(spec: str):
    """A peer sampler from ``library[:argument]``: ``kdiffusion:dpmpp_2m``, ``diffusers-unipc:3``,
    ``torchdiffeq:dopri5``, ``torchsde:euler``."""
    name, _, arg = spec.partition(":")
    make = _pick("peer", name.strip())
    try:
        return make(parse_value(arg)) if arg else make()
    except ImportError as e:
        return bench_peers.Unavailable(spec, f"{name} cannot be imported: {e}")


def cmd_bench(args) -> int:
    """Benchmark samplers x NFE budgets (adaptive samplers x tolerances) on one model, the same
    x_T for every row, peer libraries' samplers in the same run; write results.json, results.md
    and pareto.png to --out. Under torchrun the samples are sharded over the ranks."""
    from .bench import distributed as bdist
    from .bench import report, runner

    device = bdist.local_device(args.device)
    rank, world = bdist.init(device)
    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        if args.checkpoint:
            features = _pick("features", args.features) if args.features else None
            problem = bench_problems.checkpoint_problem(args.checkpoint, device=device, ema=not args.raw_weights,
                                                        inception=args.inception, reference=args.reference_images,
                                                        metrics=metrics, features=features)
        elif args.gmm.lower().endswith(".json"):
            problem = bench_problems.mixture_problem(bench_problems.mixture_from_json(args.gmm), Path(args.gmm).name,
                                                     reference_n=args.reference_n, metrics=metrics)
        else:
            problem = bench_problems.mixture_problem(_pick("gmm", args.gmm)(), args.gmm.lower(),
                                                     reference_n=args.reference_n, metrics=metrics)
    except (CheckpointError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        raise SystemExit(f"sdesolve bench: {e}") from None
    try:
        specs = _spec_list(args.solvers)
        solvers = [solver_from_spec(s) for s in specs]
    except ValueError as e:
        raise SystemExit(f"sdesolve bench: --solvers {args.solvers!r}: {e}") from None
    # an adaptive solver given its own rtol/atol runs at those alone, the others over --tolerances
    own_tol = [getattr(s, "adaptive", False) and re.search(r"[:,]\s*[ra]tol\s*=", spec) is not None
               for s, spec in zip(solvers, specs)]
    if args.peers.strip().lower() == "none":
        peers = []
    elif args.peers.strip().lower() == "auto":
        peers = bench_peers.default_peers(tolerances=bool(args.tolerances))
    else:
        peers = [peer_from_spec(s) for s in _spec_list(args.peers)]
    reference = None
    if args.work_precision:
        args.reference = "none"
    if args.reference.strip().lower() != "none":
        spec, at, budget = args.reference.rpartition("@")
        if not at:
            raise SystemExit(f"sdesolve bench: --reference {args.reference!r} is not SOLVER@NFE (or none)")
        reference = runner.Entry(solver_from_spec(spec), nfe=int(budget), reference=True)
    try:
        nfe, tols = _int_list(args.nfe), _float_list(args.tolerances)
        entries = [reference] if reference is not None else []
        for s, own in zip(solvers, own_tol):
            entries += [runner.Entry(s, tol=s.rtol)] if own else runner.grid([s], nfe, tols)
        opt_nfe = _int_list(args.optimized_nfe) if args.optimized_nfe else nfe
        try:
            opt_solvers = [solver_from_spec(s) for s in _spec_list(args.optimized_solvers)] \
                if args.optimized_solvers else solvers
        except ValueError as e:
            raise SystemExit(f"sdesolve bench: --optimized-solvers {args.optimized_solvers!r}: {e}") from None
        entries += _grid_rows(args, problem, solvers, nfe, device, opt_solvers, opt_nfe)
        entries += runner.grid([], nfe, tols, peers)
    except ValueError as e:
        raise SystemExit(f"sdesolve bench: {e}") from None
    opts = dict(n=args.n, seed=args.seed, batch_size=args.batch_size, device=device, warmup=args.warmup,
                repeats=args.repeats, bootstrap=args.bootstrap, level=args.level, progress=not args.quiet)
    try:
        if args.work_precision:
            from .bench import workprecision
            entries = [e for e in entries if not e.sampler.stochastic]
            results = workprecision.work_precision(problem, entries, reference=solver_from_spec(args.reference_solver),
                                                   **opts)
            report = workprecision
        else:
            results = runner.run(problem, entries, **opts)
    except ValueError as e:
        raise SystemExit(f"sdesolve bench: {e}") from None
    if rank == 0:
        import shlex
        argv = args.argv if getattr(args, "argv", None) is not None else sys.argv[1:]
        launcher = f"torchrun --standalone --nproc_per_node={world} -m sdesolve -- " if world > 1 else "sdesolve "
        results["meta"]["command"] = launcher + shlex.join(argv)
        paths = report.write(results, args.out)
        print(paths["md"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values() if p is not None))
    bdist.finish()
    return 0


# --- optimized grids ---------------------------------------------------------------------------
def _grid_file(path, command):
    try:
        return gridopt.load_grid(path).grid
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"sdesolve {command}: --schedule {path}: {e}") from None


def _grid_method(args, name):
    cls = _pick("grid_method", name)
    opts = {"dp": {"candidates": args.candidates, "sweeps": args.sweeps},
            "learned": {"iterations": args.iterations, "lr": args.lr}}[name.lower()]
    return cls(**{k: v for k, v in opts.items() if v is not None})


def _optimize(args, problem, solver, steps, method, device, command):
    """An optimized grid for ``problem`` (a bench Problem), calibrated on --optimization-seed."""
    if args.optimization_seed == getattr(args, "seed", None):
        raise SystemExit(f"sdesolve {command}: --optimization-seed must differ from --seed (calibration samples "
                         "are kept apart from evaluation samples)")
    ident = (gridopt.model_digest(problem.model) + ("" if args.raw_weights else ":ema")) if problem.model is not None \
        else f"gmm:{problem.name}"
    dtype = torch.float32 if problem.model is not None else torch.float64
    with torch.no_grad():  # the learned method turns gradients back on for the grid alone
        return gridopt.optimize(problem.process, problem.score, solver, steps, method=method, n=args.optimization_n,
                                seed=args.optimization_seed, reference=gridopt.Teacher(steps=args.teacher_steps),
                                shape=problem.sample_shape, device=device, dtype=dtype, model_id=ident,
                                cache=args.grid_cache, holdout=args.holdout)


def _grid_rows(args, problem, solvers, nfe, device, opt_solvers, opt_nfe) -> list:
    """bench rows with an explicit grid: --schedule FILE for every deterministic fixed-step solver,
    and --optimized-grids METHODS: one grid per method, budget of ``opt_nfe`` and deterministic
    fixed-step solver of ``opt_solvers``."""
    from .bench import runner
    rows = []
    fixed = [s for s in solvers if not s.adaptive and not s.stochastic]
    if args.schedule:
        grid = _grid_file(args.schedule, "bench")
        rows += [runner.Entry(s, nfe=(grid.numel() - 1) * s.nfe_per_step, schedule=grid, grid=Path(args.schedule).name)
                 for s in fixed]
    for name in filter(None, (m.strip().lower() for m in (args.optimized_grids or "").split(","))):
        method = _grid_method(args, name)
        for s in [s for s in opt_solvers if not s.adaptive and not s.stochastic]:
            for k in opt_nfe:
                steps = steps_for_nfe(s, k)
                if isinstance(method, gridopt.DynamicProgramming) and steps > method.candidates:
                    continue
                opt = _optimize(args, problem, s, steps, method, device, "bench")
                rows.append(runner.Entry(s, nfe=k, schedule=opt.grid, grid=name, grid_seconds=opt.record["seconds"]))
    return rows


def cmd_schedule(args) -> int:
    """Optimize a time grid for one model, solver and NFE budget (dynamic programming against
    teacher trajectories, or gradient descent through the sampler); write the grid (a tensor,
    .pt) and its record (.json beside it)."""
    device = torch.device(args.device or "cpu")
    if args.checkpoint:
        try:
            trained = load_trained(args.checkpoint, ema=not args.raw_weights)
        except CheckpointError as e:
            raise SystemExit(f"sdesolve schedule: {e}") from None
        trained.model.to(device)
        problem = bench_problems.Problem(name=str(args.checkpoint), process=trained.process, score=trained.score(),
                                         sample_shape=tuple(trained.sample_shape), quality=None, model=trained.model)
    else:
        mix = _pick("gmm", args.gmm)()
        process = VPSDE()
        problem = bench_problems.Problem(name=args.gmm.lower(), process=process, score=mix.score(process),
                                         sample_shape=(mix.D,), quality=None)
    solver = solver_from_spec(args.solver)
    if solver.adaptive or solver.stochastic:
        raise SystemExit(f"sdesolve schedule: {args.solver!r} is {'adaptive' if solver.adaptive else 'stochastic'}; "
                         "grids are optimized for deterministic fixed-step solvers")
    steps = args.steps if args.steps is not None else steps_for_nfe(solver, args.nfe)
    out = Path(args.out)
    if out.suffix != ".pt":
        raise SystemExit(f"sdesolve schedule: --out {out} must end in .pt (a tensor; the record goes beside it as .json)")
    try:
        opt = _optimize(args, problem, solver, steps, _grid_method(args, args.method), device, "schedule")
    except (ValueError, TypeError) as e:
        raise SystemExit(f"sdesolve schedule: {e}") from None
    opt.save(out)
    r = opt.record
    print(f"{r['method']} grid for {r['solver']} ({steps} steps, {r['nfe']} NFE) in {r['seconds']:.1f} s"
          f"{' (cached)' if r.get('cached') else ''}: loss {r['loss_before']:.4g} ({r['loss_before_grid']}) -> "
          f"{r['loss_after']:.4g}\n  times {', '.join(f'{t:.5g}' for t in r['grid'])}\n  -> {out}, "
          f"{out.with_suffix('.json')}")
    return 0


def _add_grid_options(p):
    p.add_argument("--optimization-n", type=int, default=64, help="calibration samples of an optimized grid")
    p.add_argument("--optimization-seed", type=int, default=gridopt.CALIBRATION_SEED,
                   help=f"calibration seed (default {gridopt.CALIBRATION_SEED}; must differ from --seed)")
    p.add_argument("--teacher-steps", type=int, default=256,
                   help="steps of the teacher (DPM-Solver++(3M), log-SNR grid) (default 256)")
    p.add_argument("--grid-cache", help="directory caching optimized grids (a .pt tensor and a .json record each)")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of the calibration samples held out of the search to choose the grid (default 0)")
    p.add_argument("--candidates", type=int, help="dp: candidate steps (default 64; divides --teacher-steps)")
    p.add_argument("--sweeps", type=int, help="dp: greedy end-to-end refinement sweeps (default 3)")
    p.add_argument("--iterations", type=int, help="learned: Adam iterations (default 150)")
    p.add_argument("--lr", type=float, help="learned: Adam learning rate (default 0.05)")


def _add_schedule(sub):
    p = sub.add_parser("schedule", help="optimize a time grid for a model, solver and NFE",
                       description=cmd_schedule.__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="a trained checkpoint (file or directory)")
    what.add_argument("--gmm", help=f"a Gaussian mixture with exact scores: {', '.join(sorted(TABLE['gmm']))}")
    p.add_argument("--solver", required=True, help="a deterministic fixed-step solver spec, e.g. dpmsolverpp:order=2")
    p.add_argument("--nfe", type=int, default=10, help="NFE budget (default 10)")
    p.add_argument("--steps", type=int, help="solver steps (overrides --nfe)")
    p.add_argument("--method", default="dp", choices=sorted(TABLE["grid_method"]))
    p.add_argument("--out", required=True, help="grid file (.pt; the record is written beside it as .json)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    _add_grid_options(p)
    p.set_defaults(func=cmd_schedule, seed=None)
# --- likelihood --------------------------------------------------------------------------------
def cmd_likelihood(args) -> int:
    """NLL of a data set under a trained checkpoint by the probability-flow ODE: nats per point
    and, for quantized images, bits per dimension with uniform dequantization; a confidence
    interval over data points and dequantization draws. Under torchrun the points are sharded."""
    import json
    from .bench import distributed as bdist
    from .bench.nll import dataset_nll, quantization_levels

    device = bdist.local_device(args.device or "cpu")
    rank, world = bdist.init(device)
    try:
        trained = load_trained(args.checkpoint, ema=not args.raw_weights)
    except CheckpointError as e:
        raise SystemExit(f"sdesolve likelihood: {e}") from None
    if args.data.lower() in ("digits", "mnist"):
        data = bench_problems.held_out_images(args.data.lower())[0]
    else:
        try:
            data = datasets.load_path(Path(args.data)).float()
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"sdesolve likelihood: --data {args.data}: {e}") from None
    if args.n:
        data = data[: args.n]
    solver = solver_from_spec(args.solver)
    if not getattr(solver, "adaptive", False) or solver.stochastic:
        raise SystemExit(f"sdesolve likelihood: --solver must be an adaptive ODE solver, got {args.solver!r}")
    trace = _pick("trace", args.trace)(probes=args.probes) if args.trace == "hutchinson" else _pick("trace", args.trace)()
    rng = trained.scaling.data_range
    levels = None
    if rng is not None and len(trained.sample_shape) == 3 and not args.continuous:
        levels = args.levels or quantization_levels(data, rng)
        if levels is None:
            raise SystemExit(f"sdesolve likelihood: the images do not lie on a grid of at most 256 levels over "
                             f"{rng}; give --levels L or --continuous")
    try:
        res = dataset_nll(trained, data, solver=solver, trace=trace, levels=levels, dequantizations=args.dequantizations,
                          seed=args.seed, batch_size=args.batch, device=device, level=args.level)
    except ValueError as e:
        raise SystemExit(f"sdesolve likelihood: {e}") from None
    if rank == 0:
        res["checkpoint"], res["data"], res["world_size"] = str(trained.path), args.data, world
        nl = res["nll_nats"]
        line = (f"NLL {nl['mean']:.4f} nats per point [{nl['lo']:.4f}, {nl['hi']:.4f}] "
                f"({res['n']} points x {res['dequantizations']} draws, {args.level:.0%} interval)")
        if "bits_per_dim" in res:
            b = res["bits_per_dim"]
            line = (f"bits/dim {b['mean']:.4f} [{b['lo']:.4f}, {b['hi']:.4f}] ({res['levels']} levels, sd within "
                    f"point {b['sd_within_point']:.3g}); " + line)
        print(line + f"; {type(solver).__name__} rtol={solver.rtol:g}, {res['trace']}; {res['nfe_total']:.0f} field "
              f"calls in {res['seconds']:.1f} s on {world} process(es)")
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, out)
    bdist.finish()
    return 0


def _add_likelihood(sub):
    p = sub.add_parser("likelihood", help="NLL / bits per dim of data under a checkpoint",
                       description=cmd_likelihood.__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or directory")
    p.add_argument("--data", required=True, help="digits or mnist (their held-out split), or a .npy/.npz file or "
                                                 "image folder, in the checkpoint's data space")
    p.add_argument("--n", type=int, help="use the first N data points")
    p.add_argument("--solver", default="dopri5:rtol=1e-5,atol=1e-5", help="adaptive ODE solver spec")
    p.add_argument("--trace", default="hutchinson", choices=sorted(TABLE["trace"]), help="divergence estimator")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per point")
    p.add_argument("--dequantizations", type=int, default=1, help="uniform dequantization draws per image")
    p.add_argument("--levels", type=int, help="quantization levels of the images (default: found from the data)")
    p.add_argument("--continuous", action="store_true", help="treat images as continuous data (no dequantization)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64, help="points per batch (aligned to global indices)")
    p.add_argument("--out", help="write the result (with per-point values) as JSON")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=cmd_likelihood)


# --- parser ------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train", help="train a score network", description=cmd_train.__doc__)
    p.add_argument("--data", help=f"a dataset ({', '.join(TABLE['data'])}) or a .npy/.npz file or image folder")
    p.add_argument("--n-data", type=_count, help="points drawn for a 2-D toy dataset (default 20000)")
    p.add_argument("--model", choices=sorted(TABLE["model"]), help="default: unet for images, mlp otherwise")
    p.add_argument("--process", choices=sorted(TABLE["process"]), help="default: vp (rectified-flow for cfm, ot-cfm)")
    p.add_argument("--loss", choices=sorted(TABLE["loss"]), help="default: dsm")
    p.add_argument("--param", choices=sorted(TABLE["param"]), help="network output (default eps; not for --loss edm)")
    p.add_argument("--sigma-data", type=float, help="EDM's sigma_data (default: the scaled data's std)")
    p.add_argument("--steps", type=_count, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=_count, help="global batch size (default 128)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup", type=_natural, help="linear learning-rate warm-up steps (default 100)")
    p.add_argument("--grad-clip", type=float, help="gradient-norm clip (default 1)")
    p.add_argument("--ema", type=float, help="EMA decay (default 0.999, with warm-up)")
    p.add_argument("--ckpt-every", type=_count, help="checkpoint every N steps (default 500) and at the end")
    p.add_argument("--seed", type=_natural, help="seed of the initialization, data sampling and noise (default 0)")
    p.add_argument("--out", required=True, help="checkpoint directory (last.pt, prev.pt)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue from --out's checkpoint, or from CKPT (a file or directory)")
    p.add_argument("--hidden", type=_count, help="MLP width (default 128)")
    p.add_argument("--depth", type=_count, help="MLP residual blocks (default 3)")
    p.add_argument("--channels", type=_count, help="U-Net base channels")
    p.add_argument("--mult", help="U-Net channel multipliers per level, e.g. 1,2,2")
    p.add_argument("--blocks", type=_count, help="U-Net residual blocks per level")
    p.add_argument("--attn", help="U-Net resolutions with self-attention, e.g. 2 or 8,4 ('' for none)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=_count, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or header line")
    p.add_argument("--stop-after", type=_natural, metavar="STEP",
                   help="exit abruptly (os._exit, as a crash) after the first checkpoint at or past STEP")
    p.set_defaults(func=cmd_train)


def _add_sample(sub):
    p = sub.add_parser("sample", help="draw samples from a trained checkpoint", description=cmd_sample.__doc__)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint file or directory")
    model.add_argument("--diffusers", metavar="DIR",
                       help="a local diffusers save_pretrained folder (UNet2DModel + DDPM-type scheduler config)")
    p.add_argument("--no-check", action="store_true", help="skip the probe of a --diffusers model's parametrization")
    p.add_argument("--class-label", type=int, help="class of a class-conditional --diffusers model")
    p.add_argument("--guidance-scale", type=float,
                   help="classifier-free guidance scale (with --class-label and --null-label)")
    p.add_argument("--null-label", type=int, help="the 'no class' label for classifier-free guidance")
    p.add_argument("--mask", help="inpainting: .npy mask of one sample's shape, true/1 where --known is kept")
    p.add_argument("--known", help="inpainting: .npy of one sample (data space) whose masked values are kept")
    p.add_argument("--solver", default="eulermaruyama",
                   help=f"solver class name with optional args, e.g. dpmsolverpp:order=3 "
                        f"(one of {', '.join(sorted(TABLE['solver']))})")
    p.add_argument("--nfe", type=_count, default=1000, help="about this many model evaluations per sample")
    p.add_argument("--steps", type=_count, help="solver steps (overrides --nfe)")
    p.add_argument("--n", type=_count, default=64, help="number of samples")
    p.add_argument("--batch", type=_count, default=1000,
                   help="samples per batch (results do not depend on it, to rounding; except adaptivesde with a "
                        "float32 model, where the model's batch-dependent rounding can flip an accept/reject "
                        "decision and make a few samples different draws)")
    p.add_argument("--seed", type=_natural, default=0)
    p.add_argument("--out", required=True, help=".npy for arrays (data space), .png for an image grid")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--threads", type=_count, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--schedule", help="a grid file (sdesolve schedule --out): sample on these times")
    p.set_defaults(func=cmd_sample)


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmark samplers: quality against NFE and wall time",
                       description=cmd_bench.__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="a trained checkpoint (file or directory) of images")
    what.add_argument("--gmm", help=f"a Gaussian mixture with exact scores: {', '.join(sorted(TABLE['gmm']))}, or a "
                                    "JSON file {\"weights\": [K], \"means\": [K][D], \"variances\": [K] | [K][D] | "
                                    "[K][D][D]}")
    p.add_argument("--solvers", default="eulermaruyama,euler,heun,ddim,dpmsolverpp:order=2,unipc:order=2,edmheun,"
                                        "dpmsolver:order=2,adaptivesde,dopri5",
                   help="comma-separated solver specs (class name with optional args, e.g. dpmsolverpp:order=3)")
    p.add_argument("--nfe", default="5,10,20,50", help="NFE budgets of the fixed-step solvers (default 5,10,20,50)")
    p.add_argument("--tolerances", default="1e-2,1e-3",
                   help="rtol = atol values of the adaptive solvers (default 1e-2,1e-3; '' for their own); "
                        "a solver spec with its own rtol/atol runs at those alone")
    p.add_argument("--reference", default="eulermaruyama@1000",
                   help="the reference row, SOLVER@NFE (default eulermaruyama@1000), or none")
    p.add_argument("--peers", default="auto",
                   help=f"auto (k-diffusion euler/heun/dpmpp_2m, diffusers DPM-Solver++, torchdiffeq dopri5, "
                        f"torchsde euler), none, or specs like kdiffusion:dpmpp_2m "
                        f"(libraries: {', '.join(sorted(TABLE['peer']))})")
    p.add_argument("--n", type=_count, default=1000, help="samples per row (default 1000)")
    p.add_argument("--seed", type=_natural, default=0)
    p.add_argument("--batch-size", type=_count, default=1000,
                   help="samples per batch (sdesolve rows do not depend on it; torchdiffeq/torchsde rows do)")
    p.add_argument("--warmup", type=_natural, default=8, help="samples of each row's untimed warm-up run (0: none)")
    p.add_argument("--reference-n", type=_count, default=10000, help="exact samples of the mixture to compare with")
    p.add_argument("--reference-images", help="held-out images for a checkpoint whose data set has no known split")
    p.add_argument("--inception", help="pt_inception-2015-12-05 weights file: adds FID (and KID in its features)")
    p.add_argument("--metrics", help="metrics to compute: fd,kid for images (default both); sw,mmd,energy for "
                                     "vectors, with nll,tv for a mixture (default all that apply)")
    p.add_argument("--features", choices=sorted(TABLE["features"]),
                   help="feature network for images (default: digits for 8x8, mnist for 28x28); one that does not "
                        "fit the images is refused")
    p.add_argument("--bootstrap", type=int, default=400,
                   help="bootstrap resamples of the sample indices for the paired intervals (default 400; 0: none)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed batches per row at least (the row's samples split; median and range; default 3)")
    p.add_argument("--work-precision", action="store_true",
                   help="deterministic samplers only: error against a tight reference solve from the same x_T vs "
                        "NFE and wall time (work_precision.md/.json/.png)")
    p.add_argument("--reference-solver", default="dopri5:rtol=1e-6,atol=1e-6",
                   help="the tight solve of --work-precision (default dopri5:rtol=1e-6,atol=1e-6)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", required=True, help="directory for results.json, results.md, pareto.png")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=_count, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--optimized-grids", default="",
                   help="add rows with grids optimized per solver and NFE: dp, learned or dp,learned")
    p.add_argument("--optimized-nfe", help="NFE budgets of the optimized-grid rows (default: every --nfe)")
    p.add_argument("--optimized-solvers", help="solver specs of the optimized-grid rows (default: every deterministic "
                                               "fixed-step solver of --solvers)")
    p.add_argument("--schedule", help="a grid file: add a row with it for every deterministic fixed-step solver")
    _add_grid_options(p)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdesolve", description="Score-based diffusion: train and sample.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_bench(sub)
    _add_schedule(sub)
    _add_likelihood(sub)
    return parser


def _check_writable_dir(directory: Path, what: str) -> None:
    """Refuse up front (before any work) a folder that is a file or cannot be written."""
    import tempfile
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SystemExit(f"sdesolve {what}: {directory} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as e:
        raise SystemExit(f"sdesolve {what}: cannot write in {directory}: {e.strerror or e}") from None


def _check_device(args) -> None:
    name = getattr(args, "device", None)
    if not name:
        return
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"sdesolve {args.command}: --device {name!r} is not a torch device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"sdesolve {args.command}: --device {name}: no CUDA device is available "
                             f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"sdesolve {args.command}: --device {name}: only {torch.cuda.device_count()} CUDA "
                             f"device(s)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    _check_device(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (CheckpointError, WriteError) as e:
        raise SystemExit(f"sdesolve {args.command}: {e}") from None


if __name__ == "__main__":
    raise SystemExit(main())
