"""Inputs of the latent extraction that must not corrupt it: layer names that map to one file, a disk
that fills up during a pixelwise extraction, and hidden folders in a Tiny ImageNet download."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from phd_lab.errors import ConfigError, ExtractionError
from phd_lab.extraction import PIXELWISE, extract_latents
from phd_lab.registry import Registries
from phd_lab.steps.extract import ExtractStep
from tests._extraction_models import build_model, loaders
from tests.conftest import small_disk


@pytest.fixture(scope="module")
def data():
    return loaders()


class Named(nn.Module):
    """Two convolutions under the given ModuleDict keys, then a linear head."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        self.d = nn.ModuleDict({first: nn.Conv2d(1, 3, 3, padding=1), second: nn.Conv2d(3, 2, 3, padding=1)})
        self.order = (first, second)
        self.head = nn.Linear(2, 10)

    def forward(self, x):
        x = self.d[self.order[1]](self.d[self.order[0]](x))
        return self.head(x.mean(dim=(2, 3)))


def _params(layers):
    return {"layers": layers, "latents_dir": None, "downsampling": 4, "dtype": "float32"}


@pytest.mark.parametrize("layers", [None, ["d.*"]])
def test_layers_whose_files_collide_are_refused_before_training_and_extraction(tmp_path, data, layers):
    with torch.device("meta"):
        meta = Named("a b", "a_b")
    with pytest.raises(ConfigError, match=r"x\.json: .*'d\.a b' and 'd\.a_b' .*train-d\.a_b\.npy"):
        ExtractStep().check_model(_params(layers), meta, "x.json")
    with pytest.raises(ConfigError, match=r"'d\.a b' and 'd\.a_b'"):
        extract_latents(Named("a b", "a_b"), data, tmp_path / "latents", run_dir=tmp_path, layers=layers,
                        downsampling=None, progress=False)
    assert not (tmp_path / "latents").exists()  # refused before anything was written


def test_a_layer_whose_file_is_a_label_file_is_refused(tmp_path, data):
    with torch.device("meta"):
        meta = _with_labels_layer()
    with pytest.raises(ConfigError, match=r"x\.json: .*layer named 'labels_'.*train-labels\.npy.*label files"):
        ExtractStep().check_model(_params(None), meta, "x.json")
    with pytest.raises(ConfigError, match="layer named 'labels_'.*label files"):
        extract_latents(_with_labels_layer(), data, tmp_path / "latents", run_dir=tmp_path, progress=False)
    assert not (tmp_path / "latents").exists()


def _with_labels_layer() -> nn.Module:
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("flat", nn.Flatten())
    model.add_module("labels_", nn.LazyLinear(10))
    return model


def test_layers_that_do_not_collide_keep_their_file_names(tmp_path, data):
    manifest = extract_latents(Named("a b", "c"), data, tmp_path / "latents", run_dir=tmp_path, layers=["d.*"],
                               downsampling=None, progress=False)
    assert [(e["name"], e["train"]) for e in manifest["layers"]] == [("d.a b", "train-d.a_b.npy"),
                                                                     ("d.c", "train-d.c.npy")]
    assert np.load(tmp_path / "latents" / "train-d.a_b.npy").shape == (len(data["train"].dataset), 3 * 8 * 8)


def test_a_disk_too_small_for_a_pixelwise_extraction_stops_it_leaving_nothing_and_naming_the_folder(tmp_path, data):
    """A real 1 MB disk: the bytes the first batch shows are to come do not fit, so the extraction stops there."""
    folder = tmp_path / "small"
    with small_disk(folder, "1m"):
        latents = folder / "latents"
        # body.0 at 8 px: a 0.4 MB scratch file fits, its 64 position files (1.5 MB) do not
        with pytest.raises(ExtractionError, match=f"need at least .* more in {latents}, but its disk has 1.0 MB"):
            extract_latents(build_model(), data, latents, run_dir=tmp_path, layers=["body.0"],
                            downsampling=PIXELWISE, progress=False)
        assert not latents.exists()  # no scratch, position or temp files, and no empty folder


def test_a_write_failing_during_a_pixelwise_extraction_leaves_nothing_and_names_the_file(tmp_path, data):
    """A disk that fills up after the space check (another job writing to it) fails a write part-way: here files
    are limited to 200 kB (EFBIG, as ENOSPC would be), which the 0.4 MB scratch file of body.0 exceeds."""
    import resource
    import signal
    from tests.conftest import file_size_limit
    latents = tmp_path / "latents"
    before, default = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    file_size_limit(200_000)()
    try:
        with pytest.raises(ExtractionError, match=f"{latents}.*File too large") as caught:
            extract_latents(build_model(), data, latents, run_dir=tmp_path, layers=["body.0"],
                            downsampling=PIXELWISE, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, default)
    assert isinstance(caught.value.__cause__, OSError)
    # the file that could not be written is named (the message said only 'File too large')
    assert f"File too large: '{latents / '.scratch-train-body.0.npy'}')" in str(caught.value)
    assert not latents.exists()  # no scratch, position or temp files, and no empty folder


def test_a_failed_extraction_leaves_no_empty_latents_folder_but_keeps_other_files(tmp_path, data):
    wrong_channels = nn.Sequential(nn.Conv2d(5, 2, 3))  # its forward pass fails once extraction has begun
    latents = tmp_path / "latents"
    with pytest.raises(RuntimeError, match="channels"):
        extract_latents(wrong_channels, data, latents, run_dir=tmp_path, layers=["0"], progress=False)
    assert not latents.exists()
    latents.mkdir()
    (latents / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="channels"):
        extract_latents(wrong_channels, data, latents, run_dir=tmp_path, layers=["0"], progress=False)
    assert [p.name for p in latents.iterdir()] == ["notes.txt"]


def test_a_loader_that_drops_samples_fails_the_extraction_instead_of_writing_short_files(tmp_path, data):
    """drop_last leaves 37 of the 1,437 training samples out: a file whose header announces 1,437 rows but holds
    1,400 would not load; the extraction stops, names the count and leaves no latents folder."""
    dropping = {"train": DataLoader(data["train"].dataset, batch_size=100, drop_last=True), "eval": data["eval"]}
    with pytest.raises(ExtractionError, match=r"train-[\w.]+\.npy: 1400 rows written, the dataset has 1437; the "
                                              r"loader must not drop samples"):
        extract_latents(build_model(), dropping, tmp_path / "latents", run_dir=tmp_path, layers=["head"],
                        progress=False)
    assert not (tmp_path / "latents").exists()


def test_tiny_imagenet_skips_hidden_folders_in_train(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    for c, wnid in enumerate(wnids):
        for i in range(2):
            path = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((64, 64, 3), c * 10 + i, dtype=np.uint8)).save(path)
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "untitled-checkpoint.ipynb").write_text("{}")
    (root / "val" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "val" / "val_annotations.txt").write_text(f"val_0.JPEG\t{wnids[1]}\t0\t0\t10\t10\n")
    bundle = Registries().datasets.get("TinyImageNet")(resolution=32, data_dir=str(tmp_path), batch_size=4, seed=0,
                                                       num_workers=0)
    assert bundle.num_classes == 3
    assert len(bundle.train.dataset) == 6 and [label for _, label in bundle.test.dataset] == [1]


def test_several_latents_sets_that_do_not_fit_together_stop_the_step_before_the_first_is_written(tmp_path, data):
    """A real 1 MB disk: the default set at 1×1 (0.16 MB) fits, the whole-map set of 'sizes' [8] (2.6 MB) does not.
    Each set checked only its own room after its first batch, so the first was written (hours for §8.3's sets of
    a ResNet18 on Cifar-10) before the second stopped the step; now the step stops before either, naming both."""
    from types import SimpleNamespace

    from phd_lab.rundir import RunDir
    from phd_lab.steps import StepContext
    folder = tmp_path / "small"
    with small_disk(folder, "1m"):
        context = StepContext(config=None, rundir=RunDir(root=folder, name="run"), model=build_model(),  # type: ignore
                              bundle=SimpleNamespace(train_eval=data["train"], test=data["eval"]),  # type: ignore
                              device=torch.device("cpu"), history=[{"test_accuracy": 0.5}], progress=False)
        params = {**_params(None), "downsampling": 1, "sizes": [8], "methods": ["adaptive_avg"]}
        with pytest.raises(ExtractionError, match=rf"its 2 latents sets need at least 2\.\d MB .* more in {folder} "
                                                  rf"\(latents 158\.1 kB, latents_8x8_avg 2\.6 MB\), but its "
                                                  rf"disk has 1\.0 MB .* free; stopped before extracting any"):
            ExtractStep().run(context, **params)
        assert list(folder.iterdir()) == []  # the set that fits was not written either


def test_a_ctrl_c_in_the_meta_forward_pass_of_the_latents_version_check_stops_it():
    """Whether old latents are still current is told by a forward pass on the meta device, which took any error for
    one the meta device or the channels cause (the next channels, then 'no such layers'): a Ctrl-C there (as a
    compiled module's ImportError) was swallowed, and the old latents were kept as current."""
    from phd_lab.extraction import meta_channels_last_linears
    from tests.conftest import interrupted_import

    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            interrupted_import()
            return self.fc(x)

    with torch.device("meta"):
        model = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        meta_channels_last_linears(model, ["fc"], 8)
