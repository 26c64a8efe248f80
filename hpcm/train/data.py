"""Training and test images: an image-folder dataset, offline embedded samples, data loaders.

Training samples are random crops with random horizontal and vertical flips (the HPCM recipe,
spec section 10) as RGB uint8 tensors, shape (3, H, W): a quarter of the bytes through the
loader's shared memory, made float on the device by the trainer (:func:`to_float`, in
``SpeedOptions.batch``). Test samples are float tensors in [0, 1], deterministic centre crops or
whole images (the model pads to multiples of 256 itself).

Speed (``benchmarks/data.py``): PIL decodes a whole PNG or JPEG file (neither format lets a
decoder skip to a region), but only the crop is converted, copied and flipped. A folder prepared once by ``python -m hpcm.train.prepare SRC DST`` holds every
image as an uncompressed ``.npy`` array, from which a sample reads only its crop (memory-mapped):
no decoding at all, and exactly the samples of the original folder.

Reproducibility: ``SeededSampler`` yields ``(index, seed)`` keys derived only from the loader seed
and the epoch, and the datasets draw their crop and flips from that seed. The data order and the
crops are therefore the same for a fixed seed whatever the number of workers, whatever else uses
the global RNG (e.g. quantization noise), which lets two optimizers see exactly the same batches.
A plain integer index falls back to the global torch RNG (torchvision-style behaviour).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from hpcm.codec.images import (
    IMAGE_EXTENSIONS,
    PIL_ERRORS,
    ImageError,
    find_images,
    image_size,
    read_pixels,
    to_8bit,
    to_tensor,
)

# Colour photographs shipped inside the scikit-image wheel (skimage/data), so they load with no
# network: name (as in skimage.data) -> file. Two are held out for testing.
EMBEDDED_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
EMBEDDED_TEST = ("astronaut", "coffee")
EMBEDDED_TRAIN = tuple(name for name in EMBEDDED_FILES if name not in EMBEDDED_TEST)
# How many file names a skip warning lists before "...".
LISTED_FILES = 5
# Images of a prepared folder (hpcm.train.prepare): (H, W, 3) uint8 arrays in NumPy's format.
PREPARED_SUFFIX = ".npy"


CropSize = int | Sequence[int]
SampleKey = int | tuple[int, int]


class DataError(ValueError):
    """A dataset cannot be built: missing folder, no usable images, undecodable file."""


class DataWarning(UserWarning):
    """Files were skipped while building a dataset."""


# ----------------------------------------------------------------------------- image helpers
def as_size(size: CropSize) -> tuple[int, int]:
    """``256`` or ``(256, 384)`` (also a Hydra ListConfig) -> ``(height, width)``."""
    if isinstance(size, int):
        height = width = size
    else:
        height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return height, width


def to_uint8_tensor(pixels: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 or uint16 RGB array (:func:`hpcm.codec.images.read_pixels`) -> (3, H, W)
    uint8 tensor; 16-bit values are rounded to 8 bits (training samples are 8-bit)."""
    # A writable copy of an array that may be read-only or shared.
    return torch.from_numpy(np.array(to_8bit(pixels), dtype=np.uint8)).permute(2, 0, 1)


class CropBox(NamedTuple):
    """Where a training crop lies and how it is flipped."""

    top: int
    left: int
    flip_h: bool
    flip_v: bool


def random_crop_box(
    image_hw: Sequence[int], size: tuple[int, int], generator: torch.Generator | None = None
) -> CropBox:
    """A uniformly random ``size`` crop of an image of ``image_hw``, with horizontal and vertical
    flips of probability 1/2 each (drawn in this order from ``generator``)."""
    height, width = size
    top = int(torch.randint(int(image_hw[0]) - height + 1, (1,), generator=generator))
    left = int(torch.randint(int(image_hw[1]) - width + 1, (1,), generator=generator))
    flip_h, flip_v = (torch.rand(2, generator=generator) < 0.5).tolist()
    return CropBox(top, left, flip_h, flip_v)


def flip(crop: Tensor, box: CropBox) -> Tensor:
    """``crop`` (..., H, W) with ``box``'s flips applied."""
    if box.flip_h:
        crop = crop.flip(-1)
    if box.flip_v:
        crop = crop.flip(-2)
    return crop


def random_crop_flip(
    image: Tensor, size: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """Random ``size`` crop, then horizontal and vertical flips with probability 1/2 each."""
    box = random_crop_box(image.shape[-2:], size, generator)
    return flip(image[..., box.top : box.top + size[0], box.left : box.left + size[1]], box)


def to_float(batch: Tensor) -> Tensor:
    """uint8 images (training samples) -> float in [0, 1]; float input is returned as is."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch


def center_crop(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre ``size`` crop (floor of the margins on the top/left)."""
    height, width = size
    top = (image.shape[-2] - height) // 2
    left = (image.shape[-1] - width) // 2
    return image[..., top : top + height, left : left + width]


def _fits(image_hw: tuple[int, int], size: tuple[int, int]) -> bool:
    return image_hw[0] >= size[0] and image_hw[1] >= size[1]


def _split_key(key: SampleKey) -> tuple[int, torch.Generator | None]:
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


def _warn_skipped(what: str, paths: Sequence[str | Path], root: str | Path) -> None:
    if not paths:
        return
    listed = ", ".join(str(p) for p in paths[:LISTED_FILES])
    more = ", ..." if len(paths) > LISTED_FILES else ""
    warnings.warn(
        f"skipped {len(paths)} {what} under {root}: {listed}{more}", DataWarning, stacklevel=3
    )


def open_prepared(path: Path) -> np.ndarray:
    """The memory-mapped (H, W, 3) uint8 array of a prepared image (nothing is read yet)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"not an (H, W, 3) uint8 image array: {array.dtype} {array.shape}")
    return array


def read_region(path: Path, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """The (h, w, 3) RGB region of an image file (uint8, or uint16 for a 16-bit file: see
    :func:`hpcm.codec.images.read_pixels`) or of a prepared array (uint8; only the region's rows
    are read)."""
    height, width = size
    if path.suffix == PREPARED_SUFFIX:
        return open_prepared(path)[top : top + height, left : left + width]
    # Decoded whole, but (for most files) only the crop is converted and copied.
    return read_pixels(path, (left, top, left + width, top + height))[0]


def _ends_with_image_data(path: Path) -> bool:
    """Whether a JPEG file has an end-of-image marker after its last start-of-scan one, which a
    truncated file lacks (ITU-T T.81 B.2.1; PIL's ``verify`` does not check JPEG data)."""
    data = path.read_bytes()
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0


def _probe(path: Path, verify: bool) -> tuple[int, int]:
    """(height, width) of an image, upright, from its header; with ``verify`` the file is
    checked as far as that is cheap: PIL's ``verify`` (chunk checksums of a PNG) and, for a
    JPEG, its end-of-image marker. A :class:`DataError` naming the file when it fails."""
    try:
        if path.suffix == PREPARED_SUFFIX:
            return tuple(open_prepared(path).shape[:2])
        size = image_size(path)
        if verify:
            with Image.open(path) as image:
                is_jpeg = image.format == "JPEG"
                image.verify()
            if is_jpeg and not _ends_with_image_data(path):
                raise ImageError(f"cannot read image {path}: truncated JPEG (no end marker)")
    except ImageError as error:
        raise DataError(str(error)) from None
    except PIL_ERRORS as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    return size


# ----------------------------------------------------------------------------- datasets
class ImageFolder(Dataset):
    """Images found recursively under ``root`` (see ``IMAGE_EXTENSIONS``), or the ``.npy``
    arrays of a folder prepared by ``python -m hpcm.train.prepare``, in sorted order.

    Args:
        root: folder to search.
        crop_size: crop size; ``None`` keeps whole images (only sensible for testing).
        train: random crop + flips (uint8) if True, centre crop (if ``crop_size``, float)
            otherwise.
        verify: check every image file at construction (PIL's cheap ``verify()``, the end
            marker of a JPEG).
        skip_bad_images: skip files that cannot be opened or verified, with one
            ``DataWarning`` naming their count and the first ones; False: a one-line
            :class:`DataError` naming the first such file.

    Images are read by :func:`hpcm.codec.images.read_pixels` (any mode it accepts, upright,
    16-bit files rounded to 8 bits for training samples, float at full precision for tests).
    Images smaller than the crop are skipped with one ``DataWarning`` naming the count and the
    first files.
    """

    def __init__(
        self,
        root: str | Path,
        crop_size: CropSize | None = None,
        train: bool = True,
        verify: bool = True,
        skip_bad_images: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.crop_size = None if crop_size is None else as_size(crop_size)
        self.train = train

        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        unreadable: list[Path] = []
        too_small: list[Path] = []
        for path in find_images(self.root, (*IMAGE_EXTENSIONS, PREPARED_SUFFIX)):
            try:
                image_hw = _probe(path, verify)
            except DataError:
                if not skip_bad_images:
                    raise
                unreadable.append(path)
                continue
            if self.crop_size is not None and not _fits(image_hw, self.crop_size):
                too_small.append(path)
            else:
                self.paths.append(path)
                self.sizes.append(image_hw)
        _warn_skipped("unreadable image file(s) (data.skip_bad_images)", unreadable, self.root)
        _warn_skipped(f"image(s) smaller than the crop {self.crop_size}", too_small, self.root)
        if not self.paths:
            raise DataError(f"no usable images in {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: SampleKey) -> Tensor:
        index, generator = _split_key(key)
        path, image_hw = self.paths[index], self.sizes[index]
        size = self.crop_size or image_hw
        try:
            if self.train:
                box = random_crop_box(image_hw, size, generator)
                return flip(to_uint8_tensor(read_region(path, box.top, box.left, size)), box)
            top, left = (image_hw[0] - size[0]) // 2, (image_hw[1] - size[1]) // 2
            return to_tensor(read_region(path, top, left, size))[0]  # 16-bit: full precision
        except ImageError as error:
            raise DataError(str(error)) from None
        except PIL_ERRORS as error:
            raise DataError(f"cannot decode image {path}: {error}") from None


def embedded_dir() -> Path:
    """The folder of sample images inside the installed scikit-image package."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; it provides the embedded samples")
    return Path(spec.submodule_search_locations[0]) / "data"


@functools.cache
def load_embedded(name: str) -> Tensor:
    """One embedded photo (a key of ``EMBEDDED_FILES``) as a (3, H, W) uint8 tensor (cached).

    Reads the file shipped in the scikit-image wheel directly, rather than through
    ``skimage.data``, whose fetchers would try a download when a file is missing.
    """
    if name not in EMBEDDED_FILES:
        raise DataError(f"unknown embedded image {name!r}; known: {', '.join(EMBEDDED_FILES)}")
    path = embedded_dir() / EMBEDDED_FILES[name]
    try:
        return to_uint8_tensor(read_pixels(path)[0])
    except ImageError as error:
        raise DataError(f"embedded image {name!r}: {error}") from None


class EmbeddedSamples(Dataset):
    """Offline default data: colour photos shipped inside scikit-image's wheel.

    Train split (``EMBEDDED_TRAIN``): ``samples_per_epoch`` random uint8 crops with flips,
    sample ``i`` taken from image ``i % len(images)``. Test split (``EMBEDDED_TEST``, held out): one centre crop
    per image, of ``crop_size`` or, when ``crop_size`` is None, of the largest multiple of
    ``test_multiple`` in each side (the whole side where it is shorter than that).
    """

    def __init__(
        self,
        split: str = "train",
        crop_size: CropSize | None = 256,
        samples_per_epoch: int | None = None,
        test_multiple: int = 256,
        names: Sequence[str] | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == "train" and (crop_size is None or samples_per_epoch is None):
            raise ValueError("the embedded train split needs a crop_size and samples_per_epoch")
        if (samples_per_epoch is not None and samples_per_epoch <= 0) or test_multiple <= 0:
            raise ValueError("samples_per_epoch and test_multiple must be positive")
        self.split = split
        self.crop_size = None if crop_size is None else as_size(crop_size)
        self.samples_per_epoch = samples_per_epoch
        self.test_multiple = test_multiple
        wanted = (
            tuple(names)
            if names is not None
            else (EMBEDDED_TRAIN if split == "train" else EMBEDDED_TEST)
        )
        images = {name: load_embedded(name) for name in wanted}
        if self.crop_size is not None:
            too_small = [n for n, im in images.items() if not _fits(im.shape[-2:], self.crop_size)]
            _warn_skipped(f"image(s) smaller than the crop {self.crop_size}", too_small, "skimage")
            images = {n: im for n, im in images.items() if n not in too_small}
        if not images:
            raise DataError(f"no usable embedded images for split {split!r}")
        self.names = list(images)
        self.images = list(images.values())

    def __len__(self) -> int:
        return self.samples_per_epoch if self.split == "train" else len(self.images)

    def __getitem__(self, key: SampleKey) -> Tensor:
        index, generator = _split_key(key)
        if self.split == "train":
            if not 0 <= index < len(self):
                raise IndexError(f"sample {index} out of range ({len(self)})")
            image = self.images[index % len(self.images)]
            return random_crop_flip(image, self.crop_size, generator)
        image = self.images[index]
        return to_float(center_crop(image, self._test_size(image)))

    def _test_size(self, image: Tensor) -> tuple[int, int]:
        if self.crop_size is not None:
            return self.crop_size
        step = self.test_multiple
        return tuple(s // step * step if s >= step else s for s in image.shape[-2:])


# ----------------------------------------------------------------------------- loaders
class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``, shuffled per epoch, from ``(seed, epoch)`` alone.

    Each ``iter()`` starts the next epoch (first: 0); ``set_epoch`` sets it, e.g. on resume,
    and may skip that epoch's first keys (a run resumed in the middle of an epoch: the keys
    alone are dropped, no image is read for them).
    With ``num_replicas > 1`` every rank draws the same permutation and takes every
    ``num_replicas``-th key from ``rank`` (the list is wrapped to an equal length per rank).
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if length <= 0:
            raise ValueError(f"cannot sample from an empty dataset (length {length})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch ``epoch`` at its key number ``skip`` (of this rank), for one ``iter()``."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return math.ceil(self.length / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0]))
        self.epoch += 1
        if self.shuffle:
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        seeds = torch.randint(torch.iinfo(torch.int64).max, (self.length,), generator=generator)
        total = len(self) * self.num_replicas
        keys = [(int(order[i % self.length]), int(seeds[i % self.length])) for i in range(total)]
        skip, self.skip = self.skip, 0
        return iter(keys[self.rank :: self.num_replicas][skip:])


class DataLoaders(NamedTuple):
    train: DataLoader
    test: DataLoader


def embedded_loaders(
    *,
    crop_size: CropSize,
    test_crop_size: CropSize | None,
    samples_per_epoch: int,
    **loader: Any,
) -> DataLoaders:
    """``data=embedded``: :class:`EmbeddedSamples`, ``samples_per_epoch`` training crops and the
    held-out test photos; ``loader`` are the keyword arguments of :func:`build_dataloaders`."""
    train = EmbeddedSamples("train", crop_size, samples_per_epoch)
    return build_dataloaders(train, EmbeddedSamples("test", test_crop_size), **loader)


def folder_loaders(
    *,
    train_dir: str | Path,
    test_dir: str | Path,
    crop_size: CropSize,
    test_crop_size: CropSize | None,
    root: str | Path | None = None,
    skip_bad_images: bool = False,
    **loader: Any,
) -> DataLoaders:
    """``data=folder`` and ``data=flickr2w``: :class:`ImageFolder` of ``train_dir`` and
    ``test_dir`` (relative to ``root`` when it is given: CompressAI's layout ROOT/train,
    ROOT/test; ``skip_bad_images``: see :class:`ImageFolder`); ``loader`` are the keyword
    arguments of :func:`build_dataloaders`."""
    base = Path(root) if root is not None else Path()
    skip = bool(skip_bad_images)
    train = ImageFolder(base / train_dir, crop_size, train=True, skip_bad_images=skip)
    test = ImageFolder(base / test_dir, test_crop_size, train=False, skip_bad_images=skip)
    return build_dataloaders(train, test, **loader)


def build_dataloaders(
    train_set: Dataset,
    test_set: Dataset,
    *,
    batch_size: int,
    test_batch_size: int,
    num_workers: int,
    seed: int,
    drop_last: bool,
    pin_memory: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoaders:
    """Train and test loaders with a data order and crops fixed by ``seed`` (see module doc).

    Test images of different sizes (no test crop) need ``test_batch_size=1``. The test loader
    is not sharded across ranks. ``loaders.train.sampler.set_epoch(e)`` resumes epoch e.
    """
    sampler = SeededSampler(len(train_set), seed, True, num_replicas, rank)
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    # Own generators, so that creating an iterator never draws from the global RNG.
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    test = DataLoader(
        test_set,
        batch_size=test_batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
    return DataLoaders(train, test)
