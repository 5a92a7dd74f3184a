"""Data: exact toy targets, data sets that draw from them, files, images and data scale.

Contract: a data set has ``sample(n, generator) -> [n, *D]`` (and ``sample_with_labels`` when it
has classes) and ``event_shape``; ``toy.GaussianMixture`` targets also give exact perturbed scores
``score_fn(sde)`` and densities, which tests and benchmarks compare against.

* ``toy``: Gaussian-mixture targets with exact densities and perturbed scores;
* ``datasets``: the built-in 2-D data sets (``make_dataset(name)``) and ``check_data``;
* ``files``: a user's own ``.npy`` / ``.npz`` / ``.csv`` data (``FileDataset``, ``Standardization``);
* ``images``: procedural 16x16 shapes (``Shapes``) and stored 8-bit images (``ImageDataset``), pixels in [-1, 1];
* ``image_folder``, ``torchvision_data``, ``digits``: a folder of PNG / JPEG (``ImageFolder``), MNIST /
  Fashion-MNIST / CIFAR-10 in torchvision's files (``TorchvisionImages``), scikit-learn's digits (``Digits``);
* ``scale``: how the data's scale meets the SDE (``sigma_max_from_data``, ``prior_mismatch``).
"""
from . import toy
from .datasets import DATASETS, DataError, MixtureDataset, ToyDataset, check_data, make_dataset
from .files import FileDataset, Standardization
from .digits import Digits
from .image_folder import ImageFolder
from .images import ImageDataset, Shapes
from .torchvision_data import TorchvisionImages
from .scale import prior_mismatch, sigma_max_from_data

__all__ = [
    "toy", "DATASETS", "DataError", "MixtureDataset", "ToyDataset", "check_data", "make_dataset",
    "FileDataset", "Standardization", "Shapes", "ImageDataset", "ImageFolder", "TorchvisionImages", "Digits",
    "prior_mismatch", "sigma_max_from_data",
]
