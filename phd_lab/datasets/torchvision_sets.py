"""Opening torchvision datasets with download support and clear errors when files are missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from phd_lab.errors import DataError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_torchvision_dataset(name: str, constructor: Callable[..., Any], data_dir: str, download: bool,
                             expected: str, **kwargs: Any) -> Any:
    """Construct a torchvision dataset; turn 'not found' and failed downloads into a DataError."""
    root = Path(data_dir).expanduser()
    try:
        return constructor(root=str(root), download=download, **kwargs)
    except RuntimeError as error:
        if "not found" not in str(error).lower() and "corrupt" not in str(error).lower():
            raise
        raise DataError(
            f"Dataset {name} is not in data_dir {str(root)!r}: place {expected} there, or set "
            f"\"dataset_args\": {{\"download\": true}} on a machine with internet access. "
            f"(torchvision said: {error})") from None
    except OSError as error:  # URLError and socket errors of a failed download
        raise DataError(
            f"Dataset {name} could not be downloaded into {str(root)!r} ({type(error).__name__}: {error}). "
            f"Without internet access, place {expected} in that folder yourself.") from None
