"""Sample-quality metrics: Frechet distances (FD/FID) from streaming statistics, KID and MMD,
sliced Wasserstein, and the feature networks they are computed in."""
from .features import (DigitsClassifierFeatures, FeatureMismatch, InceptionFeatures, MnistClassifierFeatures, check_fits,
                       extract_features)
from .frechet import FeatureStats, GaussianStats, fd_from_features, frechet_distance
from .inception import FIDInceptionV3, load_inception
from .kernel import energy_distance, kid, mmd
from .sliced import sliced_wasserstein, two_sample_floor

__all__ = ["DigitsClassifierFeatures", "InceptionFeatures", "MnistClassifierFeatures", "extract_features",
           "FeatureStats", "GaussianStats", "fd_from_features", "frechet_distance", "FIDInceptionV3",
           "load_inception", "kid", "mmd", "energy_distance", "check_fits", "FeatureMismatch", "sliced_wasserstein", "two_sample_floor"]
