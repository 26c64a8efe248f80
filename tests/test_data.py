"""Datasets, bad-file handling, embedded offline samples and reproducible loaders."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpcm.train.data import (
    EMBEDDED_FILES,
    EMBEDDED_TEST,
    EMBEDDED_TRAIN,
    DataError,
    DataLoaders,
    DataWarning,
    EmbeddedSamples,
    ImageFolder,
    SeededSampler,
    center_crop,
    embedded_loaders,
    folder_loaders,
    load_embedded,
    random_crop_flip,
)
from hpcm.train.prepare import main as prepare_main

CROP = 64


def save_png(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, np.ndarray]:
    """Two good images (one nested, upper-case suffix), a corrupt, a truncated, a tiny one."""
    good = {
        "a.png": save_png(tmp_path / "a.png", 80, 100, seed=0),
        "sub/b.PNG": save_png(tmp_path / "sub" / "b.PNG", 96, 72, seed=1),
    }
    save_png(tmp_path / "tiny.png", 16, 16, seed=2)
    (tmp_path / "corrupt.jpg").write_bytes(b"definitely not a jpeg")
    full = (tmp_path / "a.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "notes.txt").write_text("ignored")
    return good


def messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


# ----------------------------------------------------------------------------- ImageFolder
def test_folder_refuses_a_bad_file_in_one_line_naming_it(
    tmp_path: Path, folder: dict[str, np.ndarray]
) -> None:
    for train in (True, False):
        with pytest.raises(DataError, match=r"^cannot read image .*corrupt\.jpg: [^\n]*$"):
            ImageFolder(tmp_path, crop_size=CROP, train=train)
    (tmp_path / "corrupt.jpg").unlink()
    with pytest.raises(DataError, match=r"^cannot read image .*truncated\.png: [^\n]*$"):
        ImageFolder(tmp_path, crop_size=CROP, train=True)


def test_folder_skips_bad_and_small_files_with_one_warning_each(
    tmp_path: Path, folder: dict[str, np.ndarray]
) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = ImageFolder(tmp_path, crop_size=CROP, train=True, skip_bad_images=True)
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.paths] == ["a.png", "sub/b.PNG"]
    found = messages(record)
    assert len(found) == 2
    assert "skipped 2 unreadable" in found[0]
    assert "corrupt.jpg" in found[0] and "truncated.png" in found[0]
    assert "skipped 1 image(s) smaller than the crop (64, 64)" in found[1]
    assert "tiny.png" in found[1]
    for index, pixels in enumerate(folder.values()):
        sample = dataset[(index, 123)]
        assert sample.shape == (3, CROP, CROP) and sample.dtype == torch.uint8
        assert torch.equal(sample, dataset[(index, 123)])
        # the crop and flips of the whole decoded image, only the crop read and copied
        whole = torch.from_numpy(pixels).permute(2, 0, 1)
        generator = torch.Generator().manual_seed(123)
        assert torch.equal(sample, random_crop_flip(whole, (CROP, CROP), generator))


def test_folder_test_split(tmp_path: Path, folder: dict[str, np.ndarray]) -> None:
    with pytest.warns(DataWarning, match="unreadable"):
        whole = ImageFolder(tmp_path, crop_size=None, train=False, skip_bad_images=True)
    assert len(whole) == 3  # tiny images are fine without a crop
    expected = torch.from_numpy(folder["a.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(whole[0], expected)

    with pytest.warns(DataWarning):
        cropped = ImageFolder(tmp_path, crop_size=(48, 40), train=False, skip_bad_images=True)
    assert len(cropped) == 2
    assert torch.equal(cropped[0], expected[:, 16:64, 30:70])  # centre of 80x100


def test_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="image folder not found: .*nowhere"):
        ImageFolder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"no usable images in {empty}"):
        ImageFolder(empty)
    assert issubclass(DataError, ValueError)
    (empty / "bad.png").write_bytes(b"xx")
    with pytest.raises(DataError, match="bad.png"):
        ImageFolder(empty)
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable images"):
        ImageFolder(empty, skip_bad_images=True)


def test_truncated_jpeg_is_found_when_the_folder_is_read(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg")
    Image.fromarray(pixels).save(tmp_path / "y.jpg")
    full = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "x.jpg").write_bytes(full[: len(full) // 2])  # passes PIL's verify()
    with pytest.raises(DataError, match=r"x\.jpg: truncated JPEG"):
        ImageFolder(tmp_path, train=False)
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable .*x\.jpg"):
        dataset = ImageFolder(tmp_path, train=False, skip_bad_images=True)
    assert [p.name for p in dataset.paths] == ["y.jpg"]
    # Not verified when the folder is read: the sample names the file.
    dataset = ImageFolder(tmp_path, train=False, verify=False)
    with pytest.raises(DataError, match=r"^cannot read image .*x\.jpg"):
        dataset[0]


def test_kodak_loads_24_images(kodak: Path) -> None:
    dataset = ImageFolder(kodak, train=False)
    assert len(dataset) == 24
    assert dataset.paths[0].name == "kodim01.png"
    assert {tuple(dataset[i].shape) for i in (0, 3)} <= {(3, 512, 768), (3, 768, 512)}


# ----------------------------------------------------------------------------- transforms
def test_random_crop_flip_covers_all_flips() -> None:
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4)
    seen = {
        tuple(random_crop_flip(image, (3, 4), torch.Generator().manual_seed(s)).flatten().tolist())
        for s in range(32)
    }
    flips = {image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)}
    assert seen == {tuple(f.flatten().tolist()) for f in flips}
    assert center_crop(image, (1, 2)).flatten().tolist() == [5, 6]


# ----------------------------------------------------------------------------- embedded
def test_embedded_samples_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    load_embedded.cache_clear()
    train = EmbeddedSamples("train", crop_size=128, samples_per_epoch=10)
    assert len(train) == 10 and train.names == list(EMBEDDED_TRAIN)
    assert not set(train.names) & set(EMBEDDED_TEST)
    assert set(train.names) | set(EMBEDDED_TEST) == set(EMBEDDED_FILES)
    sample = train[(3, 7)]
    assert sample.shape == (3, 128, 128) and torch.equal(sample, train[(3, 7)])
    assert not torch.equal(sample, train[(3, 8)])

    test = EmbeddedSamples("test", crop_size=None)
    assert test.names == list(EMBEDDED_TEST)
    shapes = [tuple(test[i].shape) for i in range(len(test))]
    assert shapes == [(3, 512, 512), (3, 256, 512)]  # astronaut 512x512, coffee 400x600
    assert torch.equal(test[1], test[1])


def test_embedded_skips_images_smaller_than_crop() -> None:
    with pytest.warns(DataWarning, match="chelsea"):
        big = EmbeddedSamples("train", crop_size=(320, 320), samples_per_epoch=4)
    assert "chelsea" not in big.names  # 300x451
    with pytest.raises(DataError, match="no usable embedded images"), pytest.warns(DataWarning):
        EmbeddedSamples("train", crop_size=4096, samples_per_epoch=4)
    with pytest.raises(DataError, match="unknown embedded image 'lily'"):
        EmbeddedSamples("test", names=["lily"])  # not in the wheel: would need a download


def test_embedded_files_match_skimage_data() -> None:
    skdata = pytest.importorskip("skimage.data")
    assert torch.equal(
        load_embedded("astronaut"), torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    )
    left, right, _ = skdata.stereo_motorcycle()
    assert torch.equal(load_embedded("motorcycle_left"), torch.from_numpy(left).permute(2, 0, 1))
    assert torch.equal(load_embedded("motorcycle_right"), torch.from_numpy(right).permute(2, 0, 1))
    ihc = torch.from_numpy(skdata.immunohistochemistry()).permute(2, 0, 1)
    assert torch.equal(load_embedded("immunohistochemistry"), ihc)


# ----------------------------------------------------------------------------- loaders
def collect(loader: torch.utils.data.DataLoader, epochs: int) -> list[torch.Tensor]:
    return [batch for _ in range(epochs) for batch in loader]


# The keys of a data config and what the run adds (conf/data, hpcm.train.build).
LOADER_KEYS = {"test_batch_size": 1, "num_workers": 0, "seed": 0, "drop_last": False}


def embedded(**keys) -> DataLoaders:
    return embedded_loaders(**{"test_crop_size": None, **LOADER_KEYS, **keys})


def test_same_seed_same_data_whatever_the_global_rng() -> None:
    kwargs = {"crop_size": 32, "batch_size": 4, "samples_per_epoch": 12}
    torch.manual_seed(0)
    first = collect(embedded(seed=5, **kwargs).train, epochs=2)
    torch.manual_seed(1)
    second = collect(embedded(seed=5, **kwargs).train, epochs=2)
    other = collect(embedded(seed=6, **kwargs).train, epochs=2)
    assert len(first) == 6 and first[0].shape == (4, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[3])  # epochs differ


def test_workers_do_not_change_the_data() -> None:
    kwargs = {"crop_size": 32, "batch_size": 2, "samples_per_epoch": 6, "seed": 3}
    serial = collect(embedded(num_workers=0, **kwargs).train, epochs=2)
    parallel = collect(embedded(num_workers=2, **kwargs).train, epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_seeded_sampler_epochs_and_ranks() -> None:
    sampler = SeededSampler(10, seed=1)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(i for i, _ in epoch0) == list(range(10)) and epoch0 != epoch1
    sampler.set_epoch(1)
    assert list(sampler) == epoch1
    shards = [list(SeededSampler(10, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert {i for s in shards for i, _ in s} == set(range(10))


def test_folder_loaders_and_a_missing_folder(kodak: Path, tmp_path: Path) -> None:
    keys = {**LOADER_KEYS, "crop_size": 64, "test_crop_size": 256, "batch_size": 8}
    loaders = folder_loaders(train_dir=kodak, test_dir=kodak, **keys)
    assert next(iter(loaders.train)).shape == (8, 3, 64, 64)
    assert next(iter(loaders.test)).shape == (1, 3, 256, 256)
    # data=flickr2w: the folders relative to data.root (an absolute one stays as it is)
    under_root = folder_loaders(root=kodak.parent, train_dir=kodak.name, test_dir=kodak, **keys)
    assert under_root.train.dataset.paths == loaders.train.dataset.paths
    with pytest.raises(DataError, match="image folder not found"):
        folder_loaders(root=tmp_path, train_dir="train", test_dir="test", **keys)


# ----------------------------------------------------------------------------- prepared folders
def test_prepared_folder_gives_the_same_samples(
    tmp_path: Path, folder: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path, tmp_path.parent / f"{tmp_path.name}_prepared"
    with pytest.warns(DataWarning, match="skipped 2 unreadable"):
        assert prepare_main([str(source), str(target)]) == 0
    assert "3 written, 0 already there, 2 unreadable" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the bad and tiny files, as asserted above
        original = ImageFolder(source, crop_size=CROP, train=True, skip_bad_images=True)
        prepared = ImageFolder(target, crop_size=CROP, train=True)
        test_split = ImageFolder(target, crop_size=CROP, train=False)
    assert [p.name for p in prepared.paths] == ["a.png.npy", "b.PNG.npy"]
    assert prepared.sizes == original.sizes == [(80, 100), (96, 72)]
    for key in [(0, 5), (1, 6), (1, 7)]:
        assert torch.equal(prepared[key], original[key])
    whole = torch.from_numpy(folder["a.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(test_split[0], center_crop(whole, (CROP, CROP)))
    with pytest.warns(DataWarning):  # a second run keeps what is there
        assert prepare_main([str(source), str(target)]) == 0
    assert "0 written, 3 already there" in capsys.readouterr().out


def test_prepare_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: image folder not found")
    save_png(tmp_path / "a.png", 8, 8, seed=0)
    assert prepare_main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "must lie outside" in capsys.readouterr().err
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "bad.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="bad.npy"):
        ImageFolder(tmp_path / "arrays")
