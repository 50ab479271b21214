"""What a benchmark samples from: a process, a score, the sample shape, the map to data space and
the quality measure, bundled as a :class:`Problem`.

* :func:`mixture_problem`: a Gaussian mixture with its exact score under a process (default the
  VP SDE, beta 0.1..20, t_min = 1e-3), judged by :class:`~sdesolve.bench.quality.MixtureQuality`.
  Two mixtures are defined here: :func:`ring8` (2-D, 8 narrow components on a circle, unequal
  weights) and :func:`gmm8d` (8-D, 6 full-covariance components).
* :func:`checkpoint_problem`: a model trained with ``sdesolve train``, judged by Fréchet distances
  against held-out real data: the digits classifier's features for 8x8 images, the MNIST
  classifier's for 28x28, Inception's (FID) when a weights file is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..mixtures import GaussianMixture
from ..processes import VPSDE
from .quality import IMAGE_METRICS, MIXTURE_METRICS, VECTOR_METRICS, feature_quality, mixture_quality, vector_quality

__all__ = ["Problem", "ring8", "gmm8d", "mixture_problem", "mixture_from_json", "checkpoint_problem", "held_out_images"]


@dataclass
class Problem:
    name: str
    process: object
    score: object
    sample_shape: tuple
    quality: object
    to_data: Callable = field(default=lambda y: y)
    model: torch.nn.Module | None = None
    info: dict = field(default_factory=dict)

    def to(self, device) -> "Problem":
        """Move the model (if any) to ``device``."""
        if self.model is not None:
            self.model.to(device)
        return self


def ring8() -> GaussianMixture:
    """8 isotropic components (std 0.05) on the circle of radius 2, weights proportional to 1..8."""
    K = 8
    ang = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    weights = torch.arange(1, K + 1, dtype=torch.float64)
    return GaussianMixture(weights, means, torch.full((K,), 0.05**2, dtype=torch.float64))


def gmm8d() -> GaussianMixture:
    """6 components in 8-D with random full covariances 0.15 A A^T + 0.02 I (A with N(0, 1/8)
    entries) and means 1.5 N(0, I), drawn from a generator seeded with 8."""
    g = torch.Generator().manual_seed(8)
    K, D = 6, 8
    means = 1.5 * torch.randn(K, D, generator=g, dtype=torch.float64)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    covs = 0.15 * A @ A.transpose(-1, -2) + 0.02 * torch.eye(D, dtype=torch.float64)
    weights = torch.tensor([0.3, 0.25, 0.15, 0.12, 0.1, 0.08], dtype=torch.float64)
    return GaussianMixture(weights, means, covs)


def _variances(items, D: int) -> torch.Tensor:
    """Per-component variances in one form: (K,) numbers, (K, D) diagonals or (K, D, D)
    covariances; a mixture of forms becomes full covariances."""
    kinds = {0 if isinstance(v, (int, float)) else (1 if not isinstance(v[0], list) else 2) for v in items}
    if len(kinds) == 1:
        return torch.tensor(items, dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    full = []
    for v in items:
        t = torch.tensor(v, dtype=torch.float64)
        full.append(t * eye if t.dim() == 0 else (torch.diag(t) if t.dim() == 1 else t))
    return torch.stack(full)


def mixture_from_json(path) -> GaussianMixture:
    """A Gaussian mixture from a JSON file ``{"weights": [K], "means": [K][D], "variances": ...}``
    where ``variances`` is per component a number (isotropic), a list of D numbers (diagonal) or
    a D x D matrix (full covariance); weights are normalized."""
    import json
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the mixture file {path}: {e}") from None
    if not isinstance(spec, dict) or not {"weights", "means", "variances"} <= set(spec):
        raise ValueError(f"{path}: a mixture file is a JSON object with 'weights', 'means' and 'variances'")
    try:
        w = torch.tensor(spec["weights"], dtype=torch.float64)
        mu = torch.tensor(spec["means"], dtype=torch.float64)
        var = _variances(spec["variances"], mu.shape[-1])
        return GaussianMixture(w, mu, var)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(f"{path}: not a valid mixture ({e})") from None


def mixture_problem(mixture: GaussianMixture, name: str = "mixture", process=None, reference_n: int = 10000,
                    reference_seed: int = 0, metrics=None) -> Problem:
    """Sampling a Gaussian mixture with its exact score, judged by
    :func:`~sdesolve.bench.quality.mixture_quality` (``metrics``: names among sw, mmd, energy,
    nll, tv; default all)."""
    process = process if process is not None else VPSDE()
    quality = mixture_quality(mixture, process, metrics=metrics or MIXTURE_METRICS, reference_n=reference_n,
                              reference_seed=reference_seed)
    return Problem(name=name, process=process, score=mixture.score(process), sample_shape=(mixture.D,),
                   quality=quality, info={"kind": "gaussian mixture", "components": mixture.K, "dim": mixture.D,
                                          "process": repr(process)})


def held_out_images(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out images, training images) of a dataset the CLI names ("digits", "mnist"), in the
    data range of that dataset. MNIST's held-out set is its test split (10000 images)."""
    from ..train import data as datasets
    if source == "digits":
        return datasets.load_digits("test")[0], datasets.load_digits("train")[0]
    if source == "mnist":
        return datasets.load_mnist("test")[0], datasets.load_mnist("train")[0]
    raise ValueError(f"no held-out split is known for the data {source!r}: give reference images "
                     f"(a .npy/.npz file or an image folder) explicitly")


def _vector_data(source: str, reference) -> torch.Tensor:
    from ..train import data as datasets
    if reference is not None:
        return reference if isinstance(reference, torch.Tensor) else datasets.load_path(Path(reference)).float()
    path = Path(source)
    if path.exists():
        return datasets.load_path(path).float()
    raise ValueError(f"the checkpoint's data {source!r} is not a file here: give the data to compare with "
                     f"(--reference-images FILE.npy)")


def checkpoint_problem(path, device="cpu", ema: bool = True, inception=None, reference=None,
                       cache: Path | None = None, metrics=None, features=None) -> Problem:
    """A trained checkpoint (file or directory) and its held-out data.

    Images: FD/KID (``metrics`` among fd, kid) in ``features`` (a feature-extractor class,
    :class:`~sdesolve.metrics.DigitsClassifierFeatures` or
    :class:`~sdesolve.metrics.MnistClassifierFeatures`; default by image size: digits for 8x8,
    MNIST for 28x28, none otherwise) and, with ``inception`` (path
    of the pt_inception-2015-12-05 weights), in InceptionV3's; a network that does not fit the
    images is refused. Vectors: SW, MMD, energy distance to held-out points of the training data
    file (or ``reference``). ``reference``: held-out samples (a tensor in the checkpoint's data
    range, or a path readable by :func:`sdesolve.train.data.load_path`)."""
    from ..metrics import DigitsClassifierFeatures, InceptionFeatures, MnistClassifierFeatures, check_fits
    from ..train import data as datasets
    from ..train.checkpoint import load_trained

    trained = load_trained(path, ema=ema)
    trained.model.to(device)
    shape = tuple(trained.sample_shape)
    source = trained.config["data"]["source"]
    net = trained.model
    info = {"kind": "checkpoint", "path": str(trained.path), "step": trained.step, "data": source,
            "shape": list(shape), "model": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters()),
            "loss": repr(trained.loss), "process": repr(trained.process)}
    name = f"{Path(source).name if Path(source).exists() else source} checkpoint {trained.path}"
    if len(shape) != 3:
        if features is not None or inception is not None:
            raise ValueError(f"checkpoint {path}: samples of shape {shape} are vectors, not images; feature "
                             f"networks do not apply (metrics: {', '.join(VECTOR_METRICS)})")
        data = _vector_data(source, reference)
        quality = vector_quality(data, metrics=metrics or VECTOR_METRICS)
        info["reference_points"] = quality.info["reference_n"]
        return Problem(name=name, process=trained.process, score=trained.score(), sample_shape=shape,
                       quality=quality, to_data=trained.to_data, model=net, info=info)

    floor_images = None
    if reference is None:
        reference, floor_images = held_out_images(source)
    elif not isinstance(reference, torch.Tensor):
        reference = datasets.load_path(Path(reference)).float()
    data_range = trained.scaling.data_range or (float(reference.min()), float(reference.max()))
    side = shape[-1]
    if features is None:
        features = {(1, 8, 8): DigitsClassifierFeatures, (1, 28, 28): MnistClassifierFeatures}.get(shape)
    extractors = {}
    if features is not None:
        check_fits(features, shape, data_range)
        extractors[features.tag] = features()
    if inception is not None:
        check_fits(InceptionFeatures, shape, data_range)
        extractors["inception"] = InceptionFeatures(inception)
    if not extractors:
        raise ValueError(f"checkpoint {path}: no feature network fits {side}x{side} images with {shape[0]} "
                         f"channel(s) by default; give InceptionV3's weights (--inception WEIGHTS_FILE)")
    for ex in extractors.values():
        ex.to(device)
    quality = feature_quality(extractors, reference, data_range, metrics=metrics or IMAGE_METRICS,
                              floor_images=floor_images, cache=cache, source=source)
    info["reference_images"] = int(reference.shape[0])
    return Problem(name=f"{source} checkpoint {trained.path}", process=trained.process, score=trained.score(),
                   sample_shape=shape, quality=quality, to_data=trained.to_data, model=net, info=info)
