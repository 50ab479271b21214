"""Peer implementations used as oracles, loaded offline.

k-diffusion's ``sampling.py`` is loaded on its own from the k-diffusion wheel that the test
set-up downloads into ``.cache/peers`` (the package itself needs torchvision and does not
install here), by the same loader the benchmark uses. Tests that need it call
:func:`kdiffusion_sampling` and are skipped when the wheel is absent.
"""
import pytest

from sdesolve.bench import peers as _peers


def kdiffusion_sampling():
    """The module ``k_diffusion.sampling`` (skips the calling test if it cannot be loaded)."""
    try:
        return _peers.kdiffusion_sampling()
    except _peers.PeerUnavailable as e:
        pytest.skip(str(e))
