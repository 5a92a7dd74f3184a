"""Tests for the image data sets: scoresde.data.images (ImageDataset, fit_image), image_folder, torchvision_data, digits.

Every loader reads small data written by the test itself in its real on-disk format (PNG / JPEG
folders, MNIST's IDX files plain and gzipped, CIFAR-10's python pickles); pixel values are checked
exactly where the format is lossless.  Each data set then trains a few steps of the U-Net through
``Preconditioned`` and composes from its yaml.
"""
import gzip
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from scoresde import VPSDE
from scoresde.apps import config_dir
from scoresde.apps.schemas import register_schemas
from scoresde.data import DataError, Digits, ImageDataset, ImageFolder, TorchvisionImages
from scoresde.data.images import fit_image, image_grid
from scoresde.data.torchvision_data import read_idx
from scoresde.models.precond import Preconditioned
from scoresde.models.unet import UNet
from scoresde.training import TrainConfig, train


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# -- ImageDataset: pixel scaling, flips, labels -------------------------------------------------------

def test_pixels_map_to_minus_one_one_and_back_exactly():
    images = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    data = ImageDataset(images)
    x = data.sample(3, _gen())
    expected = (torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16) / 127.5 - 1).float()
    assert x.shape == (3, 1, 16, 16) and torch.equal(x, expected.expand(3, -1, -1, -1))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    back = data.to_user_units(data.sample(3, _gen(), dtype=torch.float64))  # float64 draws: v / 255 to round-off
    assert torch.allclose(back, torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16) / 255, atol=1e-12, rtol=0)
    assert torch.equal(data.data, expected)


def test_samples_are_stored_images_with_their_labels_and_reproducible():
    images = _random_uint8((10, 3, 4, 4))
    labels = np.arange(10) % 3
    data = ImageDataset(images, labels, classes=("a", "b", "c"))
    x, y = data.sample_with_labels(200, _gen(1))
    assert data.num_classes == 3 and len(data) == 10 and data.event_shape == (3, 4, 4)
    stored = data.data
    match = (x[:, None] == stored[None]).flatten(2).all(2)  # [200, 10]: which stored image each sample is
    assert (match.sum(1) == 1).all()
    assert torch.equal(torch.as_tensor(labels)[match.float().argmax(1)], y)
    assert torch.equal(x, data.sample(200, _gen(1)))


def test_flips_mirror_about_half_of_the_draws():
    images = _random_uint8((5, 1, 6, 6), seed=2)
    data = ImageDataset(images, flip=True)
    n = 4000
    x = data.sample(n, _gen(3))
    stored = data.data
    plain = (x[:, None] == stored[None]).flatten(2).all(2).any(1)
    mirrored = (x[:, None] == stored.flip(-1)[None]).flatten(2).all(2).any(1)
    assert (plain ^ mirrored).all()  # every draw is a stored image or its mirror (random images: never both)
    # Bernoulli(1/2) flips: the count has sd sqrt(n)/2 = 31.6; 4 sd is a false-failure rate of 6e-5
    assert abs(int(mirrored.sum()) - n / 2) < 4 * n**0.5 / 2
    unflipped = ImageDataset(images).sample(200, _gen(3))
    assert (unflipped[:, None] == stored[None]).flatten(2).all(2).any(1).all()  # flip=False: never mirrored


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(images=np.zeros((2, 1, 4, 4), np.float32)), DataError, "uint8"),
    (dict(images=np.zeros((2, 2, 4, 4), np.uint8)), DataError, r"C in \(1, 3\)"),
    (dict(images=np.zeros((0, 1, 4, 4), np.uint8)), DataError, "N >= 1"),
    (dict(images=np.zeros((2, 1, 4, 4), np.uint8), labels=[0, 1, 2]), DataError, "one per image"),
    (dict(images=np.zeros((2, 1, 4, 4), np.uint8), labels=[0, 5], classes=("a", "b")), DataError, "range"),
    (dict(images=np.zeros((2, 1, 4, 4), np.uint8), flip="yes"), TypeError, "flip"),
])
def test_image_dataset_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageDataset(**kwargs)


def test_unlabelled_images_refuse_labels():
    with pytest.raises(NotImplementedError, match="no natural labels"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.uint8)).sample_with_labels(2, _gen())


# -- fit_image -------------------------------------------------------------------------------------

def test_fit_image_pad_crop_and_resize():
    small = Image.fromarray(_random_uint8((3, 5)), "L")
    padded = np.asarray(fit_image(small, 8, "pad"))
    assert padded.shape == (8, 8) and np.array_equal(padded[2:5, 1:6], np.asarray(small))  # margins (5, 3) // 2
    assert padded.sum() == np.asarray(small, dtype=np.int64).sum()  # black elsewhere
    wide = np.zeros((4, 10, 3), np.uint8)
    wide[:, 3:7] = 200  # the central 4 x 4 square
    cropped = np.asarray(fit_image(Image.fromarray(wide, "RGB"), 4, "center_crop"))
    assert np.array_equal(cropped, np.full((4, 4, 3), 200, np.uint8))
    flat = np.asarray(fit_image(Image.fromarray(np.full((7, 5), 99, np.uint8), "L"), 12, "resize"))
    assert flat.shape == (12, 12) and (flat == 99).all()  # bicubic weights sum to one
    with pytest.raises(ValueError, match="`mode`='pad' needs images no larger"):
        fit_image(small, 4, "pad")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        fit_image(small, 4, "stretch")


def test_image_grid_tiles_in_unit_interval():
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.5, 2.0)])
    grid = image_grid(x, nrow=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 1)
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 4:6] == 0.5).all() and (grid[4:6, 1:3] == 1).all()


# -- ImageFolder -----------------------------------------------------------------------------------

def _write_folder(root: Path, with_classes=True) -> dict:
    written = {}
    for k, cls in enumerate(("cats", "dogs")):
        for j in range(3):
            arr = _random_uint8((8, 8, 3), seed=10 * k + j)
            folder = root / cls if with_classes else root
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{cls}{j}.png"
            Image.fromarray(arr, "RGB").save(path)
            written[path] = (arr, k)
    Image.fromarray(_random_uint8((12, 16, 3), seed=99), "RGB").save(root / ("dogs" if with_classes else "") / "big.JPG")
    return written


def test_image_folder_reads_png_exactly_and_labels_by_subfolder(tmp_path):
    written = _write_folder(tmp_path)
    data = ImageFolder(str(tmp_path), resolution=8, labels=True)
    assert len(data) == 7 and data.classes == ("cats", "dogs") and data.event_shape == (3, 8, 8)
    for i, path in enumerate(data.files):
        if path in written:
            arr, label = written[path]
            assert np.array_equal(data.images[i].numpy(), arr.transpose(2, 0, 1)), path  # PNG: lossless
            assert int(data.labels[i]) == label
    assert int(data.labels[data.files.index(tmp_path / "dogs" / "big.JPG")]) == 1  # JPEG read, cropped, resized
    x, y = data.sample_with_labels(16, _gen())
    assert x.shape == (16, 3, 8, 8) and y.max() <= 1 and float(x.abs().max()) <= 1


def test_image_folder_grey_unlabelled_and_errors(tmp_path):
    _write_folder(tmp_path, with_classes=False)
    grey = ImageFolder(str(tmp_path), resolution=4, mode="resize", channels=1)
    assert grey.event_shape == (1, 4, 4) and grey.num_classes == 0 and len(grey) == 7
    with pytest.raises(DataError, match="lie directly in it"):
        ImageFolder(str(tmp_path), resolution=4, labels=True)
    with pytest.raises(ValueError, match="`channels` must be one of"):
        ImageFolder(str(tmp_path), channels=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        ImageFolder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png could not be read"):
        ImageFolder(str(tmp_path / "empty"))


# -- torchvision's on-disk formats -----------------------------------------------------------------

def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root: Path, name: str, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    images, labels = _random_uint8((n, 28, 28), seed=5), np.arange(n, dtype=np.uint8) % 10
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        (raw / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


@pytest.mark.parametrize("name, gz", [("MNIST", False), ("FashionMNIST", True)])
def test_mnist_idx_files_read_exactly(tmp_path, name, gz):
    images, labels = _write_mnist(tmp_path, name, 12, gz)
    data = TorchvisionImages(name, root=str(tmp_path))
    assert data.event_shape == (1, 28, 28) and data.num_classes == 10 and len(data) == 12
    assert np.array_equal(data.images[:, 0].numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    padded = TorchvisionImages(name, root=str(tmp_path), resolution=32, mode="pad")
    assert padded.event_shape == (1, 32, 32) and np.array_equal(padded.images[:, 0, 2:30, 2:30].numpy(), images)
    assert padded.images[:, :, :2].sum() == 0  # black border
    with pytest.raises(FileNotFoundError, match="download=true"):
        TorchvisionImages(name, root=str(tmp_path), train=False)


def test_idx_reader_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # type 0x0d = float32
    with pytest.raises(DataError, match="not an 8-bit IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4, 3), np.uint8))[:-2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_cifar10_python_batches_read_exactly(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for k in range(1, 6):  # torchvision's layout: 5 training batches of {"data": uint8 [m, 3072], "labels": [m]}
        data = _random_uint8((3, 3072), seed=k)
        labels = [k % 10, (k + 1) % 10, (k + 2) % 10]
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump({"batch_label": f"batch {k}", "data": data, "labels": labels, "filenames": ["a", "b", "c"]}, f)
        batches.append((data, labels))
    data = TorchvisionImages("CIFAR10", root=str(tmp_path), flip=True)
    assert data.event_shape == (3, 32, 32) and len(data) == 15 and data.classes[0] == "airplane"
    expected = np.concatenate([d for d, _ in batches]).reshape(15, 3, 32, 32)  # R, G, B planes, row-major
    assert np.array_equal(data.images.numpy(), expected)
    assert data.labels.tolist() == [lab for _, labels in batches for lab in labels]
    small = TorchvisionImages("CIFAR10", root=str(tmp_path), resolution=16, mode="resize")
    assert small.event_shape == (3, 16, 16) and small.images.dtype == torch.uint8
    # channels stay apart: a bicubic 2x reduction keeps each channel's mean to within a few grey levels
    assert (small.images.double().mean((0, 2, 3)) - data.images.double().mean((0, 2, 3))).abs().max() < 3


def test_cifar10_unpickler_runs_no_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        TorchvisionImages("CIFAR10", root=str(tmp_path))


def test_torchvision_download_needs_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e \"\.\[torchvision\]\""):
            TorchvisionImages("MNIST", root=str(tmp_path), download=True)
    else:
        pytest.skip("torchvision is installed: download=True would try the network")
    with pytest.raises(ValueError, match="`name` must be one of"):
        TorchvisionImages("SVHN", root=str(tmp_path))


# -- scikit-learn's digits -------------------------------------------------------------------------

def test_digits_are_sklearns_images():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="data=digits needs the [digits] extra")
    bunch = sklearn_datasets.load_digits()
    padded = Digits(resolution=16, mode="pad")
    assert len(padded) == 1797 and padded.event_shape == (1, 16, 16) and padded.num_classes == 10
    assert np.array_equal(padded.images[:, 0, 4:12, 4:12].numpy(), np.rint(bunch.images * 255 / 16))
    assert np.array_equal(padded.labels.numpy(), bunch.target)
    resized = Digits()
    assert resized.event_shape == (1, 16, 16)
    # bicubic upscaling keeps the mean ink to within a few grey levels
    assert abs(float(resized.images.double().mean()) - float(np.rint(bunch.images * 255 / 16).mean())) < 3


# -- configs and a few training steps on each --------------------------------------------------------

@pytest.fixture(scope="module")
def image_sources(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("image_sources")
    _write_folder(tmp_path / "folder")
    _write_mnist(tmp_path / "tv", "MNIST", 12, gz=False)
    return tmp_path


@pytest.fixture(scope="module")
def image_configs(image_sources) -> dict:
    tmp_path = image_sources
    overrides = {
        "image_folder": [f"data.path={tmp_path / 'folder'}", "data.resolution=8", "data.labels=true"],
        "torchvision": [f"data.root={tmp_path / 'tv'}", "data.resolution=8", "data.mode=resize"],
        "digits": ["data.resolution=8"],
    }
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        nodes = {k: compose("train", overrides=[f"data={k}", "model=unet", *v]) for k, v in overrides.items()}
    GlobalHydra.instance().clear()
    return nodes


@pytest.mark.parametrize("option", ["image_folder", "torchvision", "digits"])
def test_each_image_config_builds_and_trains_a_unet(image_sources, image_configs, option):
    if option == "digits":
        pytest.importorskip("sklearn", reason="data=digits needs the [digits] extra")
    cfg = image_configs[option]
    data = instantiate(cfg.data, _convert_="all")
    assert isinstance(data, ImageDataset) and data.event_shape[1:] == (8, 8)
    model = instantiate(cfg.model, _convert_="all")(VPSDE(), data.event_shape, generator=_gen())
    assert isinstance(model, Preconditioned) and isinstance(model.backbone, UNet)
    result = train(model, data, TrainConfig(num_steps=3, batch_size=4, warmup_steps=0,
                                            checkpoint_dir=str(image_sources / option)))
    assert result.losses.shape == (3,) and torch.isfinite(result.losses).all()
    state = torch.load(image_sources / option / "last.pt", weights_only=True)
    assert torch.equal(state["data_transform"]["shift"], torch.full(data.event_shape, 0.5, dtype=torch.float64))
    assert state["data_transform"]["scale"] == 0.5  # samples.npz and figures map back to [0, 1]


def test_conditional_unet_trains_on_folder_labels(image_sources):
    data = ImageFolder(str(image_sources / "folder"), resolution=8, labels=True, flip=True)
    model = Preconditioned(VPSDE(), data.event_shape, backbone=partial(UNet, channels=8, embedding_dim=16),
                           num_classes=data.num_classes, generator=_gen())
    result = train(model, data, TrainConfig(num_steps=2, batch_size=4, warmup_steps=0))
    assert torch.isfinite(result.losses).all()
