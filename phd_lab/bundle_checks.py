"""A dataset factory's DataBundle against what its data hold, before the run folder is made.

The bundle declares channels, resolution and classes; the model is built for them and the receptive-field,
FLOPs and border analyses compute with them. A factory of one's own that resizes to a fixed size whatever
``resolution`` it is given trained without complaint while every analysis described another input size,
and labels counted from 1, images with other channels than declared or integer images (uint8 pixels) failed
only in the first batch, with torch's traceback. One un-augmented sample of each evaluation split, and the
labels a dataset lists, show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from phd_lab.errors import DataError, RunFailure

_SPLITS = (("test", "its test split"), ("train_eval", "its training split"))


@dataclass(frozen=True)
class SampleTypes:
    """The type of the first image tensor met and of its label as the loader batches it (``default_collate``),
    and that label's shape in the batch less the batch dimension (``()`` for a class index); None where no sample
    was such; the model and its objective must take them (``check_fits_data``)."""
    image: torch.dtype | None = None
    label: torch.dtype | None = None
    label_shape: tuple[int, ...] | None = None


def check_bundle_data(bundle: Any, resolution: int, dataset: str, source: str, where: str) -> SampleTypes:
    """Refuse (DataError) a bundle whose images or labels contradict what it declares or the config's
    ``resolution``, or whose loaders batch no (images, labels) pair. ``dataset``/``source``: the registry name and
    module, for the message. Pairs that are not (image tensor, integer label) are left to the loaders, which report
    their own errors."""
    types = SampleTypes()
    factory = f"the dataset factory {dataset!r}{f' of {source!r}' if source else ''}"
    if bundle.resolution != resolution:
        raise DataError(f"{where}: {factory} was asked for {resolution} px images and declares {bundle.resolution} "
                        f"px (its DataBundle's resolution): the model, its receptive fields and FLOPs are built for "
                        f"the config's 'resolution'. Make the factory resize to the resolution it is given.")
    for split in ("train", "test", "train_eval"):
        _require_batches(getattr(bundle, split), split, factory, where)
    declared = (bundle.in_channels, resolution, resolution)
    for split, named in _SPLITS:
        data = getattr(getattr(bundle, split), "dataset", None)
        raw = _first_sample(data, where)
        _require_pair_batches(getattr(bundle, split), raw, factory, named, where)
        sample = (raw[0], raw[1]) if isinstance(raw, (tuple, list)) and len(raw) >= 2 else None
        if sample is None:
            continue
        image, label = sample
        if isinstance(image, torch.Tensor) and types.image is None:
            types = SampleTypes(image.dtype, *_batched_type(label))
        if isinstance(image, torch.Tensor) and not image.dtype.is_floating_point:
            raise DataError(f"{where}: the first sample of {named} of {factory} is an image tensor of type "
                            f"{image.dtype}, which the model's layers cannot take (they compute in floating "
                            f"point; the run failed in its first batch). Make the factory give float images, "
                            f"e.g. pixels / 255 as torch.float32 (torchvision's ToTensor does).")
        if isinstance(image, torch.Tensor) and image.dim() == 3 and tuple(image.shape) != declared:
            raise DataError(f"{where}: {factory} declares {bundle.in_channels}-channel images of {resolution} px "
                            f"(in_channels and resolution of its DataBundle), but the first sample of {named} is an "
                            f"image of shape {tuple(image.shape)} (channels, height, width): the model, its "
                            f"receptive fields and FLOPs would describe another input. Make the factory resize to "
                            f"the 'resolution' it is given and declare the channels its images have.")
        _check_labels(_listed_labels(data, label), bundle.num_classes, factory, named, where)
    return types


def _require_batches(loader: Any, split: str, factory: str, where: str) -> None:
    """A loader of a DataBundle built by hand that yields no batch (drop_last with fewer samples than batch_size, an
    empty split) trained nothing, or measured nothing, with exit 0: the epoch's train_loss was 0.0 and its metrics
    NaN, without a word (``make_bundle`` drops a last batch only of one sample, and refuses empty splits)."""
    try:
        batches = len(loader)
    except (TypeError, NotImplementedError):  # an iterable-style dataset: its length is not known
        return
    if batches:
        return
    try:
        samples = f"{len(loader.dataset)} sample(s)"
    except (AttributeError, TypeError, NotImplementedError):
        samples = "its samples"
    raise DataError(f"{where}: the {split} loader of the DataBundle of {factory} yields no batch ({samples}, "
                    f"batch_size {getattr(loader, 'batch_size', None)}, drop_last "
                    f"{getattr(loader, 'drop_last', None)}): its epochs would train or measure nothing (a train_loss "
                    f"of 0.0 and NaN metrics). Give the split samples, a smaller batch_size or drop_last=False "
                    f"(phd_lab.data.make_bundle builds the loaders as the built-in data sets have them).")


def _batched_type(label: Any) -> tuple[torch.dtype | None, tuple[int, ...] | None]:
    """The type of ``label`` in a batch of the default loader (a Python int becomes int64, a numpy int32 int32) and
    its shape there less the batch dimension (a tensor ``[3]`` of one element batches as (B, 1): shape ``(1,)``)."""
    try:
        batched = default_collate([label])
    except (TypeError, ValueError, RuntimeError):
        return None, None
    return (batched.dtype, tuple(batched.shape[1:])) if isinstance(batched, torch.Tensor) else (None, None)


def _require_pair_batches(loader: Any, sample: Any, factory: str, named: str, where: str) -> None:
    """The trainer takes each batch as (images, labels): a dataset whose samples are dicts or carry a third item (an
    index, a file name) passed the checks, and its run failed in the first batch with 'too many values to unpack' or
    "'str' object has no attribute 'to'" (exit 1, a run folder made). ``sample`` is batched by the loader's own
    ``collate_fn`` (one of one's own may make pairs of other samples); one it cannot batch is left to the loader."""
    collate = getattr(loader, "collate_fn", None)
    if sample is None or collate is None or getattr(loader, "batch_size", None) is None:
        return
    try:
        batch = collate([sample])
    except Exception:  # noqa: BLE001 - the loader reports it in the run
        return
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return
    if isinstance(batch, dict):
        keys = ", ".join(map(repr, list(batch)[:5])) + (" ..." if len(batch) > 5 else "")
        described = f"a {type(batch).__name__} (keys {keys})"
    elif isinstance(batch, (tuple, list)):
        described = f"a {type(batch).__name__} of {len(batch)} items"
    else:
        described = f"a {type(batch).__name__}"
    raise DataError(f"{where}: the loader of {named} of {factory} gives batches of {described} (its first sample as "
                    f"the loader batches it), but the trainer takes each batch as a pair (images, labels). Make the "
                    f"dataset's __getitem__ return (image, label), e.g. return sample['image'], sample['label'].")


def _first_sample(data: Dataset | None, where: str) -> Any:
    """Sample 0 of a map-style dataset as the dataset gives it, or None (empty or iterable). A sample that
    cannot be loaded (a damaged image file, ``folders.load_image``) is a DataError: nothing has run or been written
    yet, and as the RunFailure it fails a run with during training it ended the command with exit 1 and a traceback."""
    try:
        if data is None or len(data) == 0:  # type: ignore[arg-type]
            return None
        sample = data[0]
    except (TypeError, NotImplementedError):  # an iterable-style dataset: no len or no indexing
        return None
    except RunFailure as error:
        raise DataError(f"{where}: {error}") from None
    return sample


def _listed_labels(data: Dataset | None, label: Any) -> torch.Tensor | None:
    """Every label the dataset lists (``targets``, as torchvision's data sets have, or a TensorDataset's second
    tensor), else the one sample's; None where they are no integers."""
    listed = getattr(data, "targets", None)
    if listed is None and isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        listed = data.tensors[1]
    for labels in (listed, label):
        if labels is None:
            continue
        try:
            values = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            continue
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype.is_complex:
            return None
        return values.reshape(-1)
    return None


def _check_labels(labels: torch.Tensor | None, num_classes: int, factory: str, named: str, where: str) -> None:
    if labels is None or labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"{where}: {factory} declares {num_classes} classes (num_classes of its DataBundle), so "
                        f"labels must lie in 0..{num_classes - 1}, but {named} has labels from {low} to {high}. "
                        f"Count the classes from 0 (e.g. label - 1 for labels counted from 1), or declare as many "
                        f"classes as the labels need.")
