"""Digits: scikit-learn's embedded 8×8 handwritten digits, resized to the configured resolution.

The only real image dataset that needs no download, so quickstart and tests use it. The
split is fixed (stratified, 80/20, seed 0): 1,437 training and 360 test images.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

SPLIT_SEED = 0
TEST_SHARE = 0.2
IMAGES = 1797
# The test images: scikit-learn's train_test_split(range(1797), test_size=TEST_SHARE, random_state=SPLIT_SEED,
# stratify=labels), sorted. Kept here, so that loading the digits needs no scikit-learn and the split stays the same
# whatever its version (tests/test_datasets.py checks it against scikit-learn's).
TEST_INDICES = (
    21, 24, 28, 34, 35, 37, 39, 42, 45, 51, 57, 77, 78, 81, 87, 96, 99, 102, 103, 105, 110, 117, 119, 131, 132, 134,
    148, 159, 170, 173, 186, 188, 197, 198, 202, 204, 205, 211, 214, 227, 240, 243, 245, 252, 254, 264, 267, 275,
    276, 279, 283, 286, 293, 298, 304, 305, 306, 307, 308, 312, 314, 326, 328, 335, 339, 344, 346, 364, 372, 374,
    376, 380, 386, 393, 397, 403, 405, 407, 410, 413, 417, 420, 423, 425, 430, 433, 440, 442, 452, 454, 481, 493,
    496, 497, 499, 500, 520, 527, 528, 538, 553, 556, 565, 567, 568, 569, 573, 587, 593, 604, 608, 610, 619, 637,
    639, 641, 649, 652, 666, 667, 675, 694, 700, 701, 702, 704, 705, 709, 716, 719, 734, 738, 741, 744, 749, 760,
    766, 767, 768, 770, 772, 783, 786, 787, 788, 789, 794, 800, 802, 805, 806, 808, 811, 812, 820, 822, 852, 854,
    855, 860, 865, 876, 885, 888, 890, 899, 900, 905, 908, 918, 926, 929, 937, 943, 944, 945, 951, 960, 973, 977,
    985, 989, 990, 992, 997, 1002, 1003, 1005, 1006, 1007, 1009, 1010, 1012, 1014, 1016, 1023, 1030, 1035, 1037,
    1038, 1049, 1053, 1056, 1073, 1081, 1086, 1088, 1090, 1096, 1098, 1101, 1107, 1108, 1116, 1118, 1121, 1123,
    1136, 1141, 1148, 1150, 1151, 1152, 1157, 1159, 1161, 1162, 1167, 1168, 1169, 1173, 1174, 1180, 1187, 1192,
    1204, 1217, 1220, 1221, 1224, 1232, 1233, 1242, 1253, 1261, 1262, 1264, 1268, 1269, 1270, 1287, 1292, 1296,
    1302, 1312, 1319, 1330, 1331, 1332, 1340, 1350, 1351, 1352, 1353, 1364, 1371, 1372, 1375, 1395, 1404, 1405,
    1406, 1415, 1424, 1429, 1435, 1440, 1442, 1450, 1455, 1466, 1467, 1470, 1471, 1474, 1476, 1482, 1484, 1487,
    1493, 1496, 1497, 1505, 1509, 1512, 1513, 1520, 1529, 1530, 1532, 1540, 1541, 1542, 1551, 1558, 1560, 1566,
    1567, 1576, 1582, 1592, 1596, 1602, 1606, 1608, 1610, 1613, 1614, 1617, 1626, 1628, 1629, 1634, 1637, 1645,
    1650, 1655, 1660, 1664, 1666, 1668, 1673, 1674, 1680, 1688, 1691, 1696, 1703, 1704, 1706, 1716, 1717, 1726,
    1728, 1734, 1742, 1745, 1750, 1755, 1758, 1767, 1770, 1771, 1772, 1776, 1778, 1781, 1787, 1789, 1791
)


def digits_tensors(resolution: int, standardise: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets as float tensors of shape (N, 1, resolution, resolution): standardised with the
    training set's mean and standard deviation, or (``standardise`` false) pixels in [0, 1]."""
    pixels, targets = digits_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(targets, dtype=torch.int64)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[list(TEST_INDICES)] = True
    train_idx, test_idx = torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()
    # Training images first, then test images, so that both splits are views of one resized tensor that
    # is normalised in place: one full-size copy at high resolutions instead of about three.
    order = torch.cat([train_idx, test_idx])
    images = F.interpolate(images[order], size=(resolution, resolution), mode="bilinear", align_corners=False)
    train, test = images[: len(train_idx)], images[len(train_idx):]
    if standardise:
        mean, std = train.mean(), train.std()
        images.sub_(mean).div_(std)
    return TensorDataset(train, labels[train_idx]), TensorDataset(test, labels[test_idx])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (8×8, values 0–16) and their labels, read from the file scikit-learn ships them in, as its
    ``load_digits`` reads it: importing scikit-learn for them cost every command on Digits 1.2 s (its datasets and
    model-selection modules and SciPy). Where the file is not where it was, or not as it was, ``load_digits``."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if shipped.is_file():
            with gzip.open(shipped, "rt") as rows:
                table = np.loadtxt(rows, delimiter=",")
            if table.shape == (IMAGES, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    return scikit_learn_digits()


def scikit_learn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The images and labels from scikit-learn's ``load_digits``."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target
