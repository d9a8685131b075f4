"""Layer saturation: running covariances of layer outputs, their statistics and PCA layers."""

from phd_lab.tracking.covariance import CovarianceAccumulator
from phd_lab.tracking.saturation import intrinsic_dimension, layer_statistics, sorted_eigenvalues
from phd_lab.tracking.tracker import SaturationTracker, TrackerOptions, run_pass, trackable_layers

__all__ = ["CovarianceAccumulator", "SaturationTracker", "TrackerOptions", "intrinsic_dimension",
           "layer_statistics", "run_pass", "sorted_eigenvalues", "trackable_layers"]
