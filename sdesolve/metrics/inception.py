"""InceptionV3 as used for FID, loadable from the ``pt_inception-2015-12-05`` weights file.

The network is the TensorFlow Inception graph of 2015-12-05 that FID was defined with (Heusel et
al. 2017), in the layout of its common PyTorch port: torchvision-style InceptionV3 (Szegedy et al.
2016) with a 1008-way classifier, no auxiliary head, and three departures from torchvision that
reproduce the TensorFlow graph:

- the average pools inside the A, C and first E blocks exclude the zero padding from the mean;
- the pooling branch of the last E block (``Mixed_7c``) is a 3x3 *max* pool;
- batch-norm epsilon is 1e-3.

Input images in [0, 1] are resized to 299x299 (bilinear, half-pixel centres), scaled to [-1, 1],
and the 2048-d output of the final global average pool ("pool3") is the FID feature. The 1008-way
``fc`` is part of the weights file and of :meth:`FIDInceptionV3.logits`, not of the features.

Weights are never downloaded: :func:`load_inception` reads a state-dict file the user provides
(``torch.load(weights_only=True)``) and checks every key name and shape against
:func:`expected_state_dict_shapes` before loading.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FIDInceptionV3",
    "load_inception",
    "check_inception_state_dict",
    "expected_state_dict_shapes",
    "InceptionWeightsError",
]

#: spatial size the network is applied at
INCEPTION_SIZE = 299
#: dimension of the pool3 features
INCEPTION_DIM = 2048
#: classifier width of the 2015-12-05 graph (1000 ImageNet classes plus 8 unused)
INCEPTION_CLASSES = 1008


class InceptionWeightsError(ValueError):
    """A weights file that does not match the FID InceptionV3 layout."""


class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; children named ``conv`` and ``bn``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # TensorFlow's SAME average pool divides by the number of in-image pixels
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3(x):
    return F.max_pool2d(x, 3, stride=1, padding=1)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | pool->1x1; out 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)


class _ReductionB(nn.Module):
    """35x35 -> 17x17: stride-2 3x3 | 1x1->3x3->stride-2 3x3 | max pool; out 480 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 / 7x1); out 768."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)


class _ReductionD(nn.Module):
    """17x17 -> 8x8: 1x1->stride-2 3x3 | 1x1->1x7->7x1->stride-2 3x3 | max pool; out 512 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; out 2048. ``pool`` is the pooling branch's pool."""

    def __init__(self, cin: int, pool: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        d = self.branch_pool(self.pool(x))
        return torch.cat([a, b, c, d], 1)


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3 (see the module docstring). ``forward`` returns pool3 features (B, 2048).

    Inputs are images (B, C, H, W) with values in [0, 1]; C = 1 is repeated to 3 channels, any
    H, W is resized to 299x299. Built with PyTorch's default initialisation: load real weights
    with :func:`load_inception`.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, pool_features=32)
        self.Mixed_5c = _MixedA(256, pool_features=64)
        self.Mixed_5d = _MixedA(288, pool_features=64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _MixedC(768, c7=128)
        self.Mixed_6c = _MixedC(768, c7=160)
        self.Mixed_6d = _MixedC(768, c7=160)
        self.Mixed_6e = _MixedC(768, c7=192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _MixedE(1280, pool=_avg_pool_3x3)
        self.Mixed_7c = _MixedE(2048, pool=_max_pool_3x3)
        self.fc = nn.Linear(INCEPTION_DIM, INCEPTION_CLASSES)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> (B, 3, 299, 299) in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"FIDInceptionV3 expects images (B, 1 or 3, H, W), got {tuple(images.shape)}")
        x = images
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features (B, 2048) of [0, 1] images."""
        x = self.preprocess(images.to(self.fc.weight.dtype))
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The 1008-way classifier on top of pool3 (not used by FID)."""
        return self.fc(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _is_optional(key: str) -> bool:
    # batch-norm step counters are bookkeeping, not weights; files may or may not carry them
    return key.endswith(".num_batches_tracked")


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of a ``pt_inception-2015-12-05`` state dict (built on the meta device)."""
    with torch.device("meta"):
        model = FIDInceptionV3()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_inception_state_dict(state_dict, source: str = "state dict") -> None:
    """Raise :class:`InceptionWeightsError` naming every missing, unexpected or mis-shaped key."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise InceptionWeightsError(
            f"{source} is not a state dict (a mapping from parameter names to tensors): got "
            f"{type(state_dict).__name__}"
        )
    expected = expected_state_dict_shapes()
    missing = [k for k in expected if k not in state_dict and not _is_optional(k)]
    unexpected = [k for k in state_dict if k not in expected]
    not_tensors = [k for k in state_dict if k in expected and not isinstance(state_dict[k], torch.Tensor)]
    misshaped = [
        f"{k}: expected {expected[k]}, got {tuple(state_dict[k].shape)}"
        for k in state_dict
        if k in expected and isinstance(state_dict[k], torch.Tensor) and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = []

    def listed(title, items):
        shown = items[:20]
        more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
        problems.append(f"{title} ({len(items)}): " + ", ".join(shown) + more)

    if missing:
        listed("missing keys", missing)
    if unexpected:
        listed("unexpected keys", unexpected)
    if not_tensors:
        listed("entries that are not tensors", not_tensors)
    if misshaped:
        listed("mis-shaped keys", misshaped)
    if problems:
        raise InceptionWeightsError(
            f"{source} does not match the FID InceptionV3 (pt_inception-2015-12-05) layout; "
            + "; ".join(problems)
        )


def load_inception(path: str | os.PathLike, map_location="cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` from a user-provided state-dict file; nothing is downloaded.

    The file is read with ``torch.load(weights_only=True)`` and validated key by key. The model is
    returned in eval mode with parameters frozen (``requires_grad=False``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_inception: no weights file at {path!r}. Pass the path of the pt_inception-2015-12-05 "
            "state dict; weights are never downloaded."
        )
    try:
        state_dict = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise InceptionWeightsError(
            f"load_inception: {path!r} could not be read as a tensors-only state dict "
            f"(torch.load(weights_only=True) failed: {type(e).__name__}: {e})"
        ) from e
    check_inception_state_dict(state_dict, source=repr(path))
    with torch.device("meta"):
        model = FIDInceptionV3()
    model.load_state_dict(state_dict, strict=False, assign=True)
    for name, buf in model.named_buffers():
        if buf.is_meta:  # optional counters absent from the file
            module_name, _, attr = name.rpartition(".")
            model.get_submodule(module_name).register_buffer(
                attr, torch.zeros((), dtype=torch.long, device=model.fc.weight.device)
            )
    model.eval().requires_grad_(False)
    return model
