"""A dataset factory's bundle against its own data: refused before the run folder is made (exit 2)."""

from __future__ import annotations

import pytest

from tests.conftest import main_in_process, run_folders, write_config

# A registry of one's own: each factory gets something wrong that training alone did not catch, or caught only
# in its first batch with torch's traceback.
DATASETS = '''
import torch
from phd_lab.data import make_bundle


def _bundle(name, images, labels, *, batch_size, seed, num_workers, resolution, classes=3, channels=3, targets=None):
    data = torch.utils.data.TensorDataset(images, labels)
    if targets is not None:
        data.targets = targets
    return make_bundle(name, data, data, data, num_classes=classes, in_channels=channels, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def fixed16(*, batch_size, resolution, data_dir, seed, num_workers):
    """Resizes to 16 px whatever it is asked for, and declares the resolution it was given."""
    return _bundle("fixed16", torch.rand(12, 3, 16, 16), torch.arange(12) % 3, batch_size=batch_size, seed=seed,
                   num_workers=num_workers, resolution=resolution)


def declares_other(*, batch_size, resolution, data_dir, seed, num_workers):
    """Honest about its 16 px, but not what the config asked for."""
    return _bundle("declares_other", torch.rand(12, 3, 16, 16), torch.arange(12) % 3, batch_size=batch_size,
                   seed=seed, num_workers=num_workers, resolution=16)


def grey_declared_rgb(*, batch_size, resolution, data_dir, seed, num_workers):
    return _bundle("grey", torch.rand(12, 1, resolution, resolution), torch.arange(12) % 3, batch_size=batch_size,
                   seed=seed, num_workers=num_workers, resolution=resolution)


def one_based(*, batch_size, resolution, data_dir, seed, num_workers):
    """Labels 1..3 for 3 classes; sample 0 has label 1, so only the listed labels show it."""
    return _bundle("one_based", torch.rand(12, 3, resolution, resolution), torch.arange(12) % 3 + 1,
                   batch_size=batch_size, seed=seed, num_workers=num_workers, resolution=resolution)


def listed_targets(*, batch_size, resolution, data_dir, seed, num_workers):
    """A dataset listing its labels in ``targets``, as torchvision's do: one of them is negative."""
    return _bundle("listed", torch.rand(12, 3, resolution, resolution), torch.arange(12) % 3, batch_size=batch_size,
                   seed=seed, num_workers=num_workers, resolution=resolution, targets=[0, 1, 2, -1] * 3)


def uint8_pixels(*, batch_size, resolution, data_dir, seed, num_workers):
    """Pixels 0..255 as uint8, as a numpy image array gives them, without the division ToTensor makes."""
    return _bundle("uint8", torch.randint(0, 256, (12, 3, resolution, resolution), dtype=torch.uint8),
                   torch.arange(12) % 3, batch_size=batch_size, seed=seed, num_workers=num_workers,
                   resolution=resolution)


def float64_pixels(*, batch_size, resolution, data_dir, seed, num_workers):
    """Images as torch.from_numpy gives them from a numpy float array: float64."""
    return _bundle("float64", torch.rand(12, 3, resolution, resolution, dtype=torch.float64), torch.arange(12) % 3,
                   batch_size=batch_size, seed=seed, num_workers=num_workers, resolution=resolution)


def float_labels(*, batch_size, resolution, data_dir, seed, num_workers):
    """Labels as torch.from_numpy gives them from a numpy float array."""
    return _bundle("float_labels", torch.rand(16, 3, resolution, resolution), (torch.arange(16) % 3).float(),
                   batch_size=batch_size, seed=seed, num_workers=num_workers, resolution=resolution)


def int32_labels(*, batch_size, resolution, data_dir, seed, num_workers):
    """Labels as torch.from_numpy gives them from a numpy int32 array."""
    return _bundle("int32_labels", torch.rand(16, 3, resolution, resolution), (torch.arange(16) % 3).int(),
                   batch_size=batch_size, seed=seed, num_workers=num_workers, resolution=resolution)


def column_labels(*, batch_size, resolution, data_dir, seed, num_workers):
    """Labels as a column of a table gives them: one tensor of shape (1,) per sample, batched as (B, 1)."""
    return _bundle("column_labels", torch.rand(16, 3, resolution, resolution), (torch.arange(16) % 3)[:, None],
                   batch_size=batch_size, seed=seed, num_workers=num_workers, resolution=resolution)


class _Samples(torch.utils.data.Dataset):
    """Images with labels, each sample as ``shape`` makes it of (image, label, index)."""

    def __init__(self, resolution, shape):
        self.images, self.labels, self.shape = torch.rand(12, 3, resolution, resolution), torch.arange(12) % 3, shape

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return self.shape(self.images[i], self.labels[i], i)


def with_index(*, batch_size, resolution, data_dir, seed, num_workers):
    """Samples of (image, label, index), as a dataset that also tells where each sample came from."""
    data = _Samples(resolution, lambda image, label, i: (image, label, i))
    return make_bundle("with_index", data, data, data, num_classes=3, in_channels=3, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def dict_samples(*, batch_size, resolution, data_dir, seed, num_workers):
    """Samples as dicts, as Hugging Face datasets give them."""
    data = _Samples(resolution, lambda image, label, i: {"image": image, "label": label})
    return make_bundle("dict_samples", data, data, data, num_classes=3, in_channels=3, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def drop_last_loader(*, batch_size, resolution, data_dir, seed, num_workers):
    """A bundle built by hand whose training loader drops its last batch, here its only one (12 samples, batch 16)."""
    from torch.utils.data import DataLoader
    from phd_lab.data import DataBundle
    data = torch.utils.data.TensorDataset(torch.rand(12, 3, resolution, resolution), torch.arange(12) % 3)
    return DataBundle(name="drop_last", train=DataLoader(data, batch_size=16, shuffle=True, drop_last=True),
                      test=DataLoader(data, batch_size=16), train_eval=DataLoader(data, batch_size=16),
                      num_classes=3, in_channels=3, resolution=resolution)


def honest(*, batch_size, resolution, data_dir, seed, num_workers):
    return _bundle("honest", torch.rand(12, 3, resolution, resolution), torch.arange(12) % 3, batch_size=batch_size,
                   seed=seed, num_workers=num_workers, resolution=resolution)
'''

REFUSALS = {
    "fixed16": ["declares 3-channel images of 8 px", "the first sample of its test split is an image of shape "
                "(3, 16, 16)", "Make the factory resize to the 'resolution' it is given"],
    "declares_other": ["was asked for 8 px images and declares 16 px (its DataBundle's resolution)"],
    "grey_declared_rgb": ["declares 3-channel images of 8 px", "image of shape (1, 8, 8)"],
    "one_based": ["declares 3 classes (num_classes of its DataBundle), so labels must lie in 0..2, but its test "
                  "split has labels from 1 to 3", "Count the classes from 0"],
    "listed_targets": ["labels from -1 to 2"],
    "with_index": ["gives batches of a list of 3 items", "the trainer takes each batch as a pair (images, labels)"],
    "dict_samples": ["gives batches of a dict (keys 'image', 'label')", "return sample['image'], sample['label']"],
    "drop_last_loader": ["the train loader of the DataBundle of the dataset factory 'drop_last_loader' of",
                         "yields no batch (12 sample(s), batch_size 16, drop_last True)"],
    "uint8_pixels": ["the first sample of its test split of the dataset factory 'uint8_pixels' of",
                     "is an image tensor of type torch.uint8", "Make the factory give float images"],
}


@pytest.mark.parametrize("dataset", sorted(REFUSALS))
def test_a_bundle_that_contradicts_its_data_is_refused_before_the_run_folder(tmp_path, capsys, dataset):
    """A factory that always resized to 16 px while declaring the config's 8 px trained with exit 0, and its
    receptive fields, borders and MACs (0.151 M instead of 0.605 M) described 8 px inputs; labels counted
    from 1 and grey images declared RGB failed in the first batch with torch's IndexError/RuntimeError."""
    (tmp_path / "my_data.py").write_text(DATASETS)
    config = write_config(tmp_path, dataset=dataset, registries={"datasets": "my_data.py"}, resolution=8,
                          model="mlp", model_args={"input_side": 8, "units": [[4]]}, epoch=1, batch_size=4)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    said = " ".join(err.split())
    assert code == 2, said
    assert f"the dataset factory {dataset!r} of" in said and "Traceback" not in said, said
    for part in REFUSALS[dataset]:
        assert part in said, said
    assert run_folders(tmp_path / "logs") == []


def test_an_honest_bundle_trains(tmp_path, capsys):
    (tmp_path / "my_data.py").write_text(DATASETS)
    config = write_config(tmp_path, dataset="honest", registries={"datasets": "my_data.py"}, resolution=8,
                          model="mlp", model_args={"input_side": 8, "units": [[4]]}, epoch=1, batch_size=4,
                          post_processing=[])
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    assert len(run_folders(tmp_path / "logs")) == 1


def test_a_damaged_first_image_of_a_folder_dataset_is_refused_before_the_run_folder_without_a_traceback(tmp_path):
    """The bundle check reads each split's first image before the run folder is made; a damaged one ended the
    command with exit 1 and the traceback of a failed run, although nothing had run or been written."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_datasets import write_image
    for split in ("train", "test"):
        for c, name in enumerate(["cats", "dogs"]):
            write_image(tmp_path / "pets" / split / name / "0.png", value=c)
    damaged = tmp_path / "pets" / "train" / "cats" / "0.png"  # the training split's sample 0
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    config = write_config(tmp_path, dataset=f"folder:{tmp_path / 'pets'}", resolution=8, epoch=1, batch_size=2,
                          post_processing=[])
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress", "-q"],
                          capture_output=True, text=True, timeout=300)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said
    assert "Traceback" not in said and f"The image file {str(damaged)!r} cannot be read" in said, said
    assert f"{config} (run 0)" in said, said
    assert not (tmp_path / "logs").exists() or run_folders(tmp_path / "logs") == []


DOUBLE_MODEL = """
from torch import nn


def double_mlp(*, num_classes, in_channels=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, 4), nn.ReLU(), nn.Linear(4, num_classes)).double()


def _cnn(in_channels, num_classes, kind=nn.Sequential):
    return kind(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def double_cnn(*, num_classes, in_channels=3):
    return _cnn(in_channels, num_classes).double()


def half_cnn(*, num_classes, in_channels=3):
    return _cnn(in_channels, num_classes).half()


class Casting(nn.Sequential):
    def forward(self, x):
        return super().forward(x.double())


def casting_cnn(*, num_classes, in_channels=3):
    return _cnn(in_channels, num_classes, Casting).double()
"""


def test_float64_images_are_refused_for_a_float32_model_and_train_a_float64_one(tmp_path, capsys):
    """A dataset of one's own made from a numpy float array gives float64 images: a float32 model failed in its first
    batch with torch's 'Input type (double) and bias type (float) should be the same' (exit 1, a run folder made).
    Refused before the run folder (exit 2); a model built in float64 takes them and trains."""
    (tmp_path / "my_data.py").write_text(DATASETS)
    (tmp_path / "my_models.py").write_text(DOUBLE_MODEL)
    common = dict(dataset="float64_pixels", resolution=8, epoch=1, batch_size=4, post_processing=[])
    config = write_config(tmp_path, registries={"datasets": "my_data.py"}, model="mlp",
                          model_args={"input_side": 8, "units": [[4]]}, **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in said, said
    assert ("the dataset 'float64_pixels' gives float64 images, and the parameters of model 'mlp' are float32" in said
            and "Make the dataset factory give float32 images" in said), said
    assert run_folders(tmp_path / "logs") == []
    config = write_config(tmp_path, registries={"datasets": "my_data.py", "models": "my_models.py"},
                          model="double_mlp", model_args={}, **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    assert len(run_folders(tmp_path / "logs")) == 1


_TYPE_REFUSAL = "(as the loader batches its first sample's label), and model 'mlp' is trained on class indices"


@pytest.mark.parametrize(("dataset", "said_fragments"), [
    ("float_labels", (f"the dataset 'float_labels' gives labels of type float32 {_TYPE_REFUSAL}",
                      "Make the dataset factory give integer labels")),
    ("int32_labels", (f"the dataset 'int32_labels' gives labels of type int32 {_TYPE_REFUSAL}",
                      "Make the dataset factory give integer labels")),
    ("column_labels", ("the dataset 'column_labels' gives each sample a label of shape (1,)", "label.squeeze()")),
])
def test_labels_cross_entropy_cannot_take_are_refused_for_a_classifier_not_for_an_autoencoder(tmp_path, capsys,
                                                                                              dataset, said_fragments):
    """Float labels (a numpy float array) and int32 ones failed a classifier's run in its first batch with torch's
    'expected target dtype to be Long or Byte, but got Float', and labels of shape (1,) per sample (a table's column,
    torch.tensor([label]), batched as (B, 1)) with '0D or 1D target tensor expected, multi-target not supported'
    (exit 1, a run folder made); refused before the run folder (exit 2). An autoencoder, trained on its
    reconstruction, uses no labels and trains."""
    (tmp_path / "my_data.py").write_text(DATASETS)
    common = dict(dataset=dataset, registries={"datasets": "my_data.py"}, resolution=8, epoch=1, batch_size=4,
                  post_processing=[])
    config = write_config(tmp_path, model="mlp", model_args={"input_side": 8, "units": [[4]]}, **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in said, said
    assert all(fragment in said for fragment in said_fragments), said
    assert run_folders(tmp_path / "logs") == []
    config = write_config(tmp_path, model="conv_autoencoder", model_args={}, metrics=[], **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    assert len(run_folders(tmp_path / "logs")) == 1


@pytest.mark.parametrize(("model", "dtype", "cause"), [
    ("double_cnn", "float64", "Input type"), ("half_cnn", "float16", "Input type"),
    ("double_mlp", "float64", "the Linear layer '1' got input of type float32 for its weight of type float64")])
def test_a_model_of_another_float_type_than_the_images_is_refused_where_no_autocast_casts(tmp_path, capsys, model,
                                                                                          dtype, cause):
    """A CNN whose factory ends in .double() or .half() on float32 images failed its first batch on the CPU with torch's
    'Input type (float) and bias type (double) should be the same' (exit 1, a run folder made), and so did an MLP,
    with 'mat1 and mat2 must have the same dtype' (the meta device checks no Linear layer's types). Refused before the
    run folder (exit 2); a model that casts its input itself trains."""
    (tmp_path / "my_data.py").write_text(DATASETS)
    (tmp_path / "my_models.py").write_text(DOUBLE_MODEL)
    common = dict(dataset="honest", resolution=8, epoch=1, batch_size=4, post_processing=[], device="cpu",
                  registries={"datasets": "my_data.py", "models": "my_models.py"}, model_args={})
    config = write_config(tmp_path, model=model, **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in said, said
    assert (f"the parameters of model {model!r} are {dtype}, and the dataset 'honest' gives float32 images, which "
            f"it cannot take ({cause}" in said), said
    assert run_folders(tmp_path / "logs") == []
    config = write_config(tmp_path, model="casting_cnn", **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
