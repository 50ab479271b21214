"""Score networks called as ``model(x, label)``: an MLP for vectors, a small U-Net for images."""
from .embedding import SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "SinusoidalEmbedding"]
