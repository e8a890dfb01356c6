"""MNIST and Fashion-MNIST as NumPy arrays, from verified cached downloads (lessons 00, 04+).

Files are the publishers' original gzipped IDX files. :func:`fetch` gets each one with
`pooch <https://www.fatiando.org/pooch/>`_, trying the public mirrors in order with a
timeout; every file's SHA-256 is checked, downloads go to a temporary file that is renamed
only once verified (so an interrupted download never leaves a corrupt cache), and a cached
file that is corrupt or truncated is noticed and fetched again.

Where the files live: ``$COURSE_DATA_DIR`` if set, else a per-user cache folder
(:func:`data_dir`). Either holds ``mnist/`` and ``fashion-mnist/`` with the original file
names, so files downloaded by hand can be dropped in. Nothing is written when every file
is already there and valid. No pickle is used anywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "Dataset",
    "data_dir",
    "fetch",
    "load",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

ENV_VAR = "COURSE_DATA_DIR"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Dataset:
    """A dataset's files (name -> SHA-256) and the mirrors that serve them, in order."""

    name: str
    mirrors: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = ()


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        classes=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz":
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz":
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz":
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz":
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


class DataUnavailableError(RuntimeError):
    """No valid copy of a dataset file could be found in the cache or fetched from a mirror."""


def data_dir() -> Path:
    """The folder holding ``mnist/`` and ``fashion-mnist/``: ``$COURSE_DATA_DIR`` or a user cache.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("jax-gpu-course"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve(dataset: str | Dataset) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}.")
    return DATASETS[dataset]


def fetch(
    dataset: str | Dataset,
    files: tuple[str, ...] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> dict[str, Path]:
    """Make sure ``files`` of ``dataset`` (default: all) are cached and valid; return their paths.

    A valid cached file is used as it is (nothing written). A missing, corrupt or truncated
    one is downloaded from the first mirror that serves the right bytes, each request
    limited to ``timeout`` seconds. Raises :class:`DataUnavailableError` when no mirror
    can provide a file, saying where to put it by hand.
    """
    import pooch

    spec = _resolve(dataset)
    folder = (Path(root) if root is not None else data_dir()) / spec.name
    wanted = tuple(spec.sha256) if files is None else files
    downloader = pooch.HTTPDownloader(timeout=timeout, progressbar=progress)
    pooch.get_logger().setLevel("WARNING")
    paths: dict[str, Path] = {}
    for fname in wanted:
        if fname not in spec.sha256:
            raise ValueError(f"{fname!r} is not a file of {spec.name}; expected one of "
                             f"{sorted(spec.sha256)}.")
        target = folder / fname
        known = spec.sha256[fname]
        if target.is_file() and _sha256(target) == known:
            paths[fname] = target
            continue
        state = "is corrupt or truncated" if target.exists() else "is not cached"
        errors = []
        for mirror in spec.mirrors:
            url = mirror + fname
            try:
                pooch.retrieve(url, known_hash=f"sha256:{known}", fname=fname, path=folder,
                               downloader=downloader)
            except Exception as error:  # network errors, HTTP errors, checksum mismatch
                errors.append(f"{url}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
                continue
            paths[fname] = target
            break
        else:
            tried = "\n  ".join(errors)
            raise DataUnavailableError(
                f"{spec.name}/{fname} {state} and no mirror could provide it.\n"
                f"Tried:\n  {tried}\n"
                f"To fix it: check your internet connection and run again, or download "
                f"{fname} by hand (from any mirror above) and put it at {target} "
                f"(SHA-256 {known}). To keep the data somewhere else, set the "
                f"environment variable {ENV_VAR} to a folder holding {spec.name}/."
            )
    return paths


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array.

    Returns shape ``(N, rows, cols)`` for image files and ``(N,)`` for label files.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError) as error:
        raise ValueError(f"{path} is not a complete gzip file ({error}).") from error
    if len(raw) < 8:
        raise ValueError(f"{path} is too short to be an IDX file ({len(raw)} bytes).")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()}).")
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is too short to be an IDX file ({len(raw)} bytes) with "
                         f"{ndim} dimensions.")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} values.")
    return body.reshape(dims)


def load(
    dataset: str | Dataset,
    split: Literal["train", "test"] = "train",
    *,
    dtype: Literal["uint8", "float32"] = "uint8",
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split as NumPy arrays.

    Returns ``(images, labels)``: images ``(N, 28, 28)``, uint8 in [0, 255] or, with
    ``dtype="float32"``, float32 in [0, 1]; labels ``(N,)`` uint8 in 0..9.
    N is 60000 for ``"train"`` and 10000 for ``"test"``.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}.")
    image_file, label_file = SPLIT_FILES[split]
    paths = fetch(dataset, (image_file, label_file), root=root, progress=progress)
    images, labels = read_idx(paths[image_file]), read_idx(paths[label_file])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{_resolve(dataset).name} {split}: images {images.shape} do not "
                         f"match labels {labels.shape}.")
    if dtype == "float32":
        images = images.astype(np.float32) / np.float32(255)
    return images, labels


def load_mnist(
    split: Literal["train", "test"] = "train", *, dtype: Literal["uint8", "float32"] = "uint8"
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits: ``(images (N, 28, 28), labels (N,))``; see :func:`load`."""
    return load("mnist", split, dtype=dtype)


def load_fashion_mnist(
    split: Literal["train", "test"] = "train", *, dtype: Literal["uint8", "float32"] = "uint8"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST articles: ``(images (N, 28, 28), labels (N,))``; see :func:`load`."""
    return load("fashion-mnist", split, dtype=dtype)
