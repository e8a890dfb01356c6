"""Tests of utils/data.py: verified, cached downloads (from a local server) and IDX reading.

Every download here comes from an HTTP server on 127.0.0.1 that the tests start; it
serves tiny IDX files generated below. The real MNIST files are only read, from the
folder in ``$COURSE_DATA_DIR`` (set by the root conftest), and never written to.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from utils import data

TIMEOUT = 2.0
N_TRAIN, N_TEST = 7, 3


# ---------------------------------------------------------------------------- fixtures

def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as a gzipped IDX file, the MNIST format (deterministic bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


ARRAYS = make_arrays()
# Guarantee the extremes are present so the float32 range check means something.
ARRAYS["train-images-idx3-ubyte.gz"][0, 0, :2] = (0, 255)
FILES = {name: idx_bytes(a) for name, a in ARRAYS.items()}
SHA256 = {name: hashlib.sha256(b).hexdigest() for name, b in FILES.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes ``/<mode>/<file>``: ``good`` serves the file, ``wrong`` other bytes of the
    same length, ``cut`` half the file under a Content-Length of the whole then hangs up,
    ``missing`` a 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        _, mode, fname = self.path.split("/", 2)
        body = FILES.get(fname)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode == "wrong":
            body = bytes(255 - b for b in body)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(server):
    """``mirror("good")`` -> the URL prefix of a local mirror behaving as that mode."""
    server.requests.clear()
    port = server.server_address[1]
    return lambda mode: f"http://127.0.0.1:{port}/{mode}/"


def closed_mirror() -> str:
    """A URL prefix on a 127.0.0.1 port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def closed_port() -> str:
    return closed_mirror()


def spec(*mirrors: str, name: str = "tiny") -> data.Dataset:
    return data.Dataset(name=name, mirrors=tuple(mirrors), sha256=dict(SHA256),
                        classes=tuple(str(d) for d in range(10)))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (relative name -> (size, mtime_ns))."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def requested(server, mode: str) -> list[str]:
    return [path for path in server.requests if path.startswith(f"/{mode}/")]


# ---------------------------------------------------------------------------- happy path

def test_fetch_downloads_verifies_and_caches_under_original_names(server, mirror, tmp_path):
    paths = data.fetch(spec(mirror("good")), root=tmp_path, timeout=TIMEOUT)

    assert set(paths) == set(FILES)
    for fname, path in paths.items():
        assert path == tmp_path / "tiny" / fname
        assert path.read_bytes() == FILES[fname]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == sorted(FILES)
    assert sorted(server.requests) == sorted(f"/good/{f}" for f in FILES)


def test_fetch_a_subset_downloads_only_those_files(server, mirror, tmp_path):
    wanted = ("t10k-labels-idx1-ubyte.gz",)
    paths = data.fetch(spec(mirror("good")), wanted, root=tmp_path, timeout=TIMEOUT)
    assert list(paths) == list(wanted)
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == list(wanted)
    assert server.requests == [f"/good/{wanted[0]}"]


def test_load_gives_uint8_and_float32_arrays(mirror, tmp_path):
    dataset = spec(mirror("good"))
    images, labels = data.load(dataset, "train", root=tmp_path, progress=False)
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert images.shape == (N_TRAIN, 28, 28) and labels.shape == (N_TRAIN,)
    np.testing.assert_array_equal(images, ARRAYS["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(labels, ARRAYS["train-labels-idx1-ubyte.gz"])

    images32, labels32 = data.load(dataset, "test", dtype="float32", root=tmp_path,
                                   progress=False)
    expected = ARRAYS["t10k-images-idx3-ubyte.gz"].astype(np.float32) / 255
    assert images32.dtype == np.float32 and images32.shape == (N_TEST, 28, 28)
    np.testing.assert_allclose(images32, expected, rtol=1e-7)
    np.testing.assert_array_equal(labels32, ARRAYS["t10k-labels-idx1-ubyte.gz"])

    train32, _ = data.load(dataset, "train", dtype="float32", root=tmp_path, progress=False)
    assert train32.min() == 0.0 and train32.max() == 1.0


def test_second_call_writes_nothing_and_sends_no_request(server, mirror, tmp_path):
    dataset = spec(mirror("good"))
    data.fetch(dataset, root=tmp_path, timeout=TIMEOUT)
    before = snapshot(tmp_path)
    server.requests.clear()

    paths = data.fetch(dataset, root=tmp_path, timeout=TIMEOUT)
    data.load(dataset, "train", root=tmp_path, progress=False)

    assert server.requests == []
    assert snapshot(tmp_path) == before
    assert all(p.read_bytes() == FILES[f] for f, p in paths.items())


def test_cached_files_are_used_without_any_mirror(mirror, closed_port, tmp_path):
    data.fetch(spec(mirror("good")), root=tmp_path, timeout=TIMEOUT)
    before = snapshot(tmp_path)
    images, _ = data.load(spec(closed_port), "test", root=tmp_path, progress=False)
    np.testing.assert_array_equal(images, ARRAYS["t10k-images-idx3-ubyte.gz"])
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- failures

def test_checksum_mismatch_is_not_cached_and_next_mirror_is_used(server, mirror, tmp_path):
    fname = "train-labels-idx1-ubyte.gz"
    paths = data.fetch(spec(mirror("wrong"), mirror("good")), (fname,), root=tmp_path,
                       timeout=TIMEOUT)
    assert server.requests == [f"/wrong/{fname}", f"/good/{fname}"]
    assert paths[fname].read_bytes() == FILES[fname]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [fname]  # no temp files


def test_checksum_mismatch_everywhere_raises_and_leaves_nothing(server, mirror, tmp_path):
    fname = "train-labels-idx1-ubyte.gz"
    with pytest.raises(data.DataUnavailableError) as info:
        data.fetch(spec(mirror("wrong"), mirror("wrong")), (fname,), root=tmp_path,
                   timeout=TIMEOUT)
    message = str(info.value)
    assert fname in message and SHA256[fname] in message
    assert message.count(mirror("wrong") + fname) == 2  # both attempts are listed
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("damage", ["truncated", "same length, wrong bytes", "empty"])
def test_damaged_cached_file_is_fetched_again(server, mirror, tmp_path, damage):
    fname = "train-images-idx3-ubyte.gz"
    target = tmp_path / "tiny" / fname
    target.parent.mkdir(parents=True)
    good = FILES[fname]
    target.write_bytes({"truncated": good[: len(good) // 2],
                        "same length, wrong bytes": good[:-1] + bytes([good[-1] ^ 1]),
                        "empty": b""}[damage])

    data.fetch(spec(mirror("good")), (fname,), root=tmp_path, timeout=TIMEOUT)

    assert server.requests == [f"/good/{fname}"]
    assert target.read_bytes() == good
    assert [p.name for p in target.parent.iterdir()] == [fname]


def test_damaged_cached_file_and_no_mirror_says_it_is_corrupt(closed_port, tmp_path):
    fname = "train-images-idx3-ubyte.gz"
    target = tmp_path / "tiny" / fname
    target.parent.mkdir(parents=True)
    target.write_bytes(FILES[fname][:100])
    with pytest.raises(data.DataUnavailableError, match="corrupt or truncated"):
        data.fetch(spec(closed_port), (fname,), root=tmp_path, timeout=TIMEOUT)


def test_interrupted_download_leaves_no_partial_file_and_next_mirror_is_used(
        server, mirror, tmp_path):
    fname = "train-images-idx3-ubyte.gz"
    paths = data.fetch(spec(mirror("cut"), mirror("good")), (fname,), root=tmp_path,
                       timeout=TIMEOUT)
    assert server.requests == [f"/cut/{fname}", f"/good/{fname}"]
    assert paths[fname].read_bytes() == FILES[fname]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [fname]


def test_interrupted_download_with_no_other_mirror_leaves_cache_empty(server, mirror, tmp_path):
    fname = "train-images-idx3-ubyte.gz"
    with pytest.raises(data.DataUnavailableError):
        data.fetch(spec(mirror("cut")), (fname,), root=tmp_path, timeout=TIMEOUT)
    assert requested(server, "cut") == [f"/cut/{fname}"]
    assert snapshot(tmp_path) == {}  # neither a partial file nor a temporary one


def test_http_error_moves_on_to_the_next_mirror(server, mirror, tmp_path):
    fname = "t10k-labels-idx1-ubyte.gz"
    data.fetch(spec(mirror("missing"), mirror("good")), (fname,), root=tmp_path,
               timeout=TIMEOUT)
    assert server.requests == [f"/missing/{fname}", f"/good/{fname}"]


def test_first_mirror_down_second_mirror_used(server, mirror, closed_port, tmp_path):
    paths = data.fetch(spec(closed_port, mirror("good")), root=tmp_path, timeout=TIMEOUT)
    assert all(p.read_bytes() == FILES[f] for f, p in paths.items())
    assert sorted(server.requests) == sorted(f"/good/{f}" for f in FILES)


def test_offline_without_cache_raises_one_clear_error(closed_port, tmp_path):
    other = closed_mirror()
    dataset = spec(closed_port, other)
    with pytest.raises(data.DataUnavailableError) as info:
        data.load(dataset, "train", root=tmp_path, progress=False)
    message = str(info.value)
    folder = tmp_path / "tiny"
    assert str(folder / "train-images-idx3-ubyte.gz") in message  # where to put the file
    assert "COURSE_DATA_DIR" in message
    assert "not cached" in message
    assert closed_port + "train-images-idx3-ubyte.gz" in message  # every mirror tried
    assert other + "train-images-idx3-ubyte.gz" in message
    assert isinstance(info.value, RuntimeError)
    assert not folder.exists() or snapshot(folder) == {}


def test_course_data_dir_overrides_the_cache_folder(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data.data_dir() == tmp_path / "elsewhere"
    paths = data.fetch(spec(mirror("good")), ("t10k-labels-idx1-ubyte.gz",), timeout=TIMEOUT)
    assert paths["t10k-labels-idx1-ubyte.gz"] == (
        tmp_path / "elsewhere" / "tiny" / "t10k-labels-idx1-ubyte.gz")
    assert paths["t10k-labels-idx1-ubyte.gz"].is_file()


def test_without_course_data_dir_a_user_cache_is_used(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    folder = data.data_dir()
    assert folder.is_absolute() and "jax-gpu-course" in str(folder)


def test_fetch_rejects_unknown_dataset_and_file(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        data.fetch("cifar-10", root=tmp_path)
    with pytest.raises(ValueError, match="is not a file of"):
        data.fetch(spec("http://127.0.0.1:9/"), ("labels.csv",), root=tmp_path)
    assert snapshot(tmp_path) == {}


# ---------------------------------------------------------------------------- read_idx / load

def write_gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


@pytest.mark.parametrize("shape", [(5,), (4, 28, 28), (2, 3, 5)])
def test_read_idx_round_trips_labels_and_images(tmp_path, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(array))
    got = data.read_idx(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"\x00" * 8, "unsigned-byte IDX"),  # float
        (b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00", "unsigned-byte IDX"),  # magic
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 2) + b"\x00" * 4, "unsigned-byte IDX"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 9, "holds 9 values"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 2, 2, 2) + b"\x00" * 9, "holds 9 values"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "too short"),  # header cut short
    ],
    ids=["short", "float-type", "bad-magic", "2-dims", "labels-size", "images-size",
         "short-header"],
)
def test_read_idx_rejects_bad_files_with_value_error(tmp_path, raw, match):
    path = write_gz(tmp_path / "bad.gz", raw)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["not gzip", "gzip cut short"])
def test_read_idx_rejects_a_file_that_is_not_complete_gzip(tmp_path, damage):
    raw = idx_bytes(np.arange(100, dtype=np.uint8))
    path = tmp_path / "damaged.gz"
    path.write_bytes(gzip.decompress(raw) if damage == "not gzip" else raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"split": "validation"}, "split must be"), ({"split": "Train"}, "split must be"),
     ({"dtype": "float64"}, "dtype must be"), ({"dtype": np.float32}, "dtype must be")],
)
def test_load_rejects_bad_split_and_dtype_before_any_download(server, mirror, tmp_path,
                                                              kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(spec(mirror("good")), root=tmp_path, progress=False, **kwargs)
    assert server.requests == []
    assert snapshot(tmp_path) == {}


def test_load_rejects_images_and_labels_of_different_lengths(mirror, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(idx_bytes(np.zeros((3, 28, 28))))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(4)))
    odd = data.Dataset("odd", (mirror("good"),), {
        name: hashlib.sha256(p.read_bytes()).hexdigest()
        for name, p in ((p.name, p) for p in folder.iterdir())})
    with pytest.raises(ValueError, match="do not match"):
        data.load(odd, "test", root=tmp_path, progress=False)


# ---------------------------------------------------------------------------- the real files

@pytest.fixture(scope="module")
def real_data_dir() -> Path:
    folder = os.environ.get("COURSE_DATA_DIR")
    if not folder or not all((Path(folder) / name).is_dir() for name in ("mnist", "fashion-mnist")):
        pytest.skip("COURSE_DATA_DIR does not point at a folder with the real datasets")
    return Path(folder)


@pytest.mark.parametrize("loader", [data.load_mnist, data.load_fashion_mnist])
def test_real_datasets_load_with_the_published_shapes_and_write_nothing(real_data_dir, loader):
    before = snapshot(real_data_dir)
    entries = sorted(p.name for p in real_data_dir.rglob("*"))

    train_x, train_y = loader("train")
    test_x, test_y = loader("test")

    assert train_x.shape == (60000, 28, 28) and train_y.shape == (60000,)
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
    for array in (train_x, train_y, test_x, test_y):
        assert array.dtype == np.uint8
    for labels in (train_y, test_y):
        assert set(np.unique(labels).tolist()) == set(range(10))
    assert train_x.max() == 255 and train_x.min() == 0

    assert snapshot(real_data_dir) == before
    assert sorted(p.name for p in real_data_dir.rglob("*")) == entries


def test_real_mnist_float32_is_scaled_to_unit_interval(real_data_dir):
    images, labels = data.load_mnist("test", dtype="float32")
    assert images.dtype == np.float32 and images.shape == (10000, 28, 28)
    assert images.min() == 0.0 and images.max() == 1.0
    raw, _ = data.load_mnist("test")
    np.testing.assert_allclose(images, raw / np.float32(255), rtol=1e-7)
    # Published statistic of the MNIST test images: mean pixel about 0.1325.
    assert abs(float(images.mean()) - 0.1325) < 0.001
    assert labels.dtype == np.uint8


def test_dataset_specs_name_four_files_and_ten_classes():
    for name, dataset in data.DATASETS.items():
        assert dataset.name == name
        assert set(dataset.sha256) == {f for pair in data.SPLIT_FILES.values() for f in pair}
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in dataset.sha256.values())
        assert len(dataset.classes) == 10
        assert dataset.mirrors and all(m.endswith("/") for m in dataset.mirrors)
