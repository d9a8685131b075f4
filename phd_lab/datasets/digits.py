"""Digits: scikit-learn's embedded 8×8 handwritten digits, resized to the configured resolution.

The only real image dataset that needs no download, so quickstart and tests use it. The
split is fixed (stratified, 80/20, seed 0): 1,437 training and 360 test images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

SPLIT_SEED = 0
TEST_SHARE = 0.2


def digits_tensors(resolution: int, standardise: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets as float tensors of shape (N, 1, resolution, resolution): standardised with the
    training set's mean and standard deviation, or (``standardise`` false) pixels in [0, 1]."""
    # imported here: the registry imports this module, and every command (a dry run, --list, each array task of a
    # grid on another data set) paid scikit-learn's import, 2 s of CPU and 78 MB, for data it never loads
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=TEST_SHARE, random_state=SPLIT_SEED,
                                           stratify=digits.target)
    train_idx, test_idx = torch.tensor(sorted(train_idx)), torch.tensor(sorted(test_idx))
    # Training images first, then test images, so that both splits are views of one resized tensor that
    # is normalised in place: one full-size copy at high resolutions instead of about three.
    order = torch.cat([train_idx, test_idx])
    images = F.interpolate(images[order], size=(resolution, resolution), mode="bilinear", align_corners=False)
    train, test = images[: len(train_idx)], images[len(train_idx):]
    if standardise:
        mean, std = train.mean(), train.std()
        images.sub_(mean).div_(std)
    return TensorDataset(train, labels[train_idx]), TensorDataset(test, labels[test_idx])
