"""Reference score-network training: losses, parametrizations, networks, EMA, the trainer with
atomic checkpoints and exact resume, and offline datasets."""
from .checkpoint import (CheckpointError, TrainedModel, find_checkpoint, load_checkpoint, load_trained,
                         save_checkpoint, score_from_checkpoint)
from .data import (GMM2D, Scaling, checkerboard, fit_scaling, gmm2d, load_array, load_digits, load_image_folder,
                   load_mnist, load_path, moons, swissroll)
from . import score_matching
from .ema import EMA
from .losses import (DenoisingScoreMatching, EDMLoss, EpsPrediction, LikelihoodWeighted, LogSNRUniformTimes, Loss,
                     Parametrization, ScorePrediction, VPrediction, X0Prediction)
from .flow import ConditionalFlowMatching, OTConditionalFlowMatching, ot_permutation
from .models import MLP, UNet
from .models.edm import EDMPrecond
from .spec import build, describe
from .trainer import TrainConfig, Trainer

__all__ = [
    "score_matching", "Loss", "DenoisingScoreMatching", "LikelihoodWeighted", "EDMLoss", "LogSNRUniformTimes",
    "ConditionalFlowMatching", "OTConditionalFlowMatching", "ot_permutation",
    "Parametrization", "EpsPrediction", "ScorePrediction", "X0Prediction", "VPrediction",
    "MLP", "UNet", "EDMPrecond", "EMA", "TrainConfig", "Trainer",
    "CheckpointError", "TrainedModel", "save_checkpoint", "load_checkpoint", "find_checkpoint", "load_trained",
    "score_from_checkpoint", "describe", "build",
    "Scaling", "fit_scaling", "load_digits", "load_mnist", "load_array", "load_image_folder", "load_path",
    "gmm2d", "GMM2D", "moons", "swissroll", "checkerboard",
]
