"""Sample-quality metrics: Frechet distances (FD/FID) from streaming statistics, KID and MMD,
sliced Wasserstein, and the feature networks they are computed in."""
from .features import DigitsClassifierFeatures, InceptionFeatures, MnistClassifierFeatures, extract_features
from .frechet import FeatureStats, GaussianStats, fd_from_features, frechet_distance
from .inception import FIDInceptionV3, load_inception
from .kernel import kid, mmd
from .sliced import sliced_wasserstein, two_sample_floor

__all__ = ["DigitsClassifierFeatures", "InceptionFeatures", "MnistClassifierFeatures", "extract_features",
           "FeatureStats", "GaussianStats", "fd_from_features", "frechet_distance", "FIDInceptionV3",
           "load_inception", "kid", "mmd", "sliced_wasserstein", "two_sample_floor"]
