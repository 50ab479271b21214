"""Peer implementations used as oracles, loaded offline.

k-diffusion's ``sampling.py`` is loaded on its own from the k-diffusion wheel that the test
set-up downloads into ``.cache/peers`` (the package itself needs torchvision and does not
install here). Its only in-package import, ``utils``, is given the one function it uses,
``append_dims``, written here. Tests that need it call :func:`kdiffusion_sampling` and are
skipped when the wheel is absent.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
import types
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("SDESOLVE_PEERS", os.path.join(ROOT, ".cache", "peers"))


def _append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def kdiffusion_sampling():
    """The module ``k_diffusion.sampling`` (skips the calling test if the wheel is missing)."""
    name = "k_diffusion.sampling"
    if name in sys.modules:
        return sys.modules[name]
    wheels = sorted(glob.glob(os.path.join(PEERS, "k_diffusion-*.whl")))
    if not wheels:
        pytest.skip(f"k-diffusion wheel not found in {PEERS} (the test set-up downloads it)")
    with zipfile.ZipFile(wheels[-1]) as zf:
        source = zf.read("k_diffusion/sampling.py").decode()
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    pkg.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "k_diffusion"
    sys.modules[name] = mod
    exec(compile(source, f"{wheels[-1]}/k_diffusion/sampling.py", "exec"), mod.__dict__)
    return mod
