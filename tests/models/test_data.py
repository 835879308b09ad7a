"""Tests for ppl.models.data: digits, MNIST IDX files, download, binarization, minibatches.

Corrupted files are made in tmp_path; the real MNIST files are only read (once per module).
No test reaches the internet: downloads come from an http.server on 127.0.0.1.
"""
import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import struct
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.models import data

from .._stats import Z

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMES = data.MNIST_FILES  # role -> file name without .gz


# ---------------------------------------------------------------------------------------------
# Helpers: small fake MNIST folders


def idx_bytes(array, code=0x08):
    """IDX bytes of a uint8 array (or any dtype given by its IDX type code)."""
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_mnist(n_train=12, n_test=5, seed=0):
    """Uncompressed IDX bytes for the four files: name -> bytes."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {NAMES[role]: idx_bytes(a) for role, a in arrays.items()}, arrays


def md5s(contents):
    return {name: hashlib.md5(raw).hexdigest() for name, raw in contents.items()}


def write_folder(folder, contents, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in contents.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


@pytest.fixture
def fake(tmp_path):
    """A folder with a small valid MNIST (gzip), its checksums and its arrays."""
    contents, arrays = fake_mnist()
    return write_folder(tmp_path / "mnist", contents), md5s(contents), arrays, contents


# ---------------------------------------------------------------------------------------------
# Digits and the dispatcher


def test_digits_shapes_dtypes_and_range():
    ds = data.load_digits()
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (1257, 180, 360)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_valid, ds.y_valid), (ds.x_test, ds.y_test)]:
        assert x.dtype == np.float32 and x.shape[1] == 64
        assert y.dtype == np.int32 and y.shape == (len(x),)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(y)) <= set(range(10))
    assert ds.x_train.max() == 1.0  # pixel / 16 reaches 1
    assert ds.image_shape == (8, 8) and ds.num_features == 64 and ds.num_classes == 10
    assert ds.images(ds.x_test).shape == (360, 8, 8)
    assert ds.images(jnp.zeros((3, 5, 64))).shape == (3, 5, 8, 8)
    assert "train=1257" in repr(ds)


def test_digits_split_is_a_fixed_function_of_the_seed():
    a, b, c = data.load_digits(), data.load_digits(seed=0), data.load_digits(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    # The three parts partition the 1,797 images.
    from sklearn.datasets import load_digits as sk
    total = np.sort((sk().data / 16.0).astype(np.float32).sum(axis=1))
    ours = np.sort(np.concatenate([a.x_train, a.x_valid, a.x_test]).sum(axis=1))
    np.testing.assert_allclose(ours, total, rtol=1e-6)


def test_digits_custom_split_and_bad_counts():
    ds = data.load_digits(n_valid=0, n_test=97)
    assert (len(ds.x_train), len(ds.x_valid), len(ds.x_test)) == (1700, 0, 97)
    assert ds.x_valid.shape == (0, 64)
    with pytest.raises(ValueError, match="leave no training data out of 1797"):
        data.load_digits(n_valid=1000, n_test=797)
    with pytest.raises(ValueError, match="n_test must be a non-negative integer"):
        data.load_digits(n_test=-1)


def test_load_dispatches_and_lists_valid_names(fake):
    assert data.load("digits", n_test=100).x_test.shape == (100, 64)
    folder, sums, _, _ = fake
    assert data.load("mnist", path=folder, n_valid=2, checksums=sums).x_valid.shape == (2, 784)
    with pytest.raises(ValueError, match=r"Unknown data set 'cifar'; valid names: 'digits', 'mnist'"):
        data.load("cifar")


def test_dataset_rejects_inconsistent_shapes():
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int32)
    with pytest.raises(data.DataError, match=r"x_valid has shape \(4, 63\)"):
        data.Dataset("d", x, y, x[:, :63], y, x, y, image_shape=(8, 8))


# ---------------------------------------------------------------------------------------------
# IDX files and MNIST from a folder


def test_read_idx_gzip_and_raw_detected_by_magic_not_name(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(a)
    files = {
        "raw": raw, "gz.gz": gzip.compress(raw),
        "gzip_without_suffix": gzip.compress(raw), "raw_named.gz": raw,
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        out = data.read_idx(tmp_path / name, md5=hashlib.md5(raw).hexdigest(), ndim=3)
        np.testing.assert_array_equal(out, a)
        assert out.dtype == np.uint8
    wide = np.array([[-1, 2**20]], dtype=np.int32)
    (tmp_path / "int32").write_bytes(idx_bytes(wide, code=0x0C))
    out = data.read_idx(tmp_path / "int32")
    np.testing.assert_array_equal(out, wide)
    assert out.dtype == np.int32


def test_load_mnist_from_folder(fake):
    folder, sums, arrays, _ = fake
    ds = data.load_mnist(folder, n_valid=3, checksums=sums)
    assert ds.name == "mnist" and ds.image_shape == (28, 28)
    assert (ds.x_train.shape, ds.x_valid.shape, ds.x_test.shape) == ((9, 784), (3, 784), (5, 784))
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    full = arrays["train_images"].reshape(12, 784) / 255.0
    np.testing.assert_allclose(ds.x_train, full[:9], rtol=1e-6)
    np.testing.assert_allclose(ds.x_valid, full[9:], rtol=1e-6)  # the last n_valid
    np.testing.assert_array_equal(ds.y_valid, arrays["train_labels"][9:])
    np.testing.assert_array_equal(ds.images(ds.x_test) * 255.0,
                                  arrays["test_images"].astype(np.float32))


def test_load_mnist_raw_files_and_env_var(tmp_path, monkeypatch):
    contents, _ = fake_mnist()
    folder = write_folder(tmp_path / "raw", contents, gz=False)
    monkeypatch.setenv(data.MNIST_DIR_ENV, str(folder))
    ds = data.load_mnist(n_valid=2, checksums=md5s(contents))
    assert ds.x_train.shape == (10, 784)
    # Verification can be switched off for a modified copy.
    assert data.load_mnist(n_valid=2, checksums=None).x_test.shape == (5, 784)


def test_load_mnist_binarization(fake):
    folder, sums, arrays, _ = fake
    th = data.load_mnist(folder, n_valid=2, checksums=sums, binarization="threshold")
    expected = (arrays["test_images"].reshape(5, 784) / 255.0 > 0.5).astype(np.float32)
    np.testing.assert_array_equal(th.x_test, expected)
    b1 = data.load_mnist(folder, n_valid=2, checksums=sums, binarization="bernoulli", seed=3)
    b2 = data.load_mnist(folder, n_valid=2, checksums=sums, binarization="bernoulli", seed=3)
    b3 = data.load_mnist(folder, n_valid=2, checksums=sums, binarization="bernoulli", seed=4)
    np.testing.assert_array_equal(b1.x_train, b2.x_train)
    assert not np.array_equal(b1.x_train, b3.x_train)
    assert set(np.unique(b1.x_train)) == {0.0, 1.0} and b1.x_train.dtype == np.float32
    with pytest.raises(ValueError, match="Unknown binarization method 'dynamic'"):
        data.load_mnist(folder, n_valid=2, checksums=sums, binarization="dynamic")


# ---------------------------------------------------------------------------------------------
# Bad input: each a clear error, nothing returned


def test_no_folder_says_how_to_get_the_data(monkeypatch):
    monkeypatch.delenv(data.MNIST_DIR_ENV, raising=False)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_mnist()
    message = str(info.value)
    for hint in ("PPL_MNIST_DIR", "--mnist-dir", "download=True", "base_url"):
        assert hint in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_missing_file_names_the_paths_tried(fake):
    folder, sums, _, _ = fake
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_mnist(folder, n_valid=2, checksums=sums)
    message = str(info.value)
    assert str(folder / "t10k-labels-idx1-ubyte.gz") in message
    assert str(folder / "t10k-labels-idx1-ubyte") in message
    assert "PPL_MNIST_DIR" in message and "--mnist-dir" in message and "download" in message
    with pytest.raises(data.DataNotFoundError, match="does not exist"):
        data.load_mnist(folder / "nowhere", checksums=sums)


def test_wrong_checksum(fake):
    folder, sums, _, _ = fake
    bad = dict(sums, **{"train-labels-idx1-ubyte": "0" * 32})
    with pytest.raises(data.DataError, match=r"Checksum mismatch for .*train-labels-idx1-ubyte"
                       r"\.gz.*expected 0{32}.*delete it and fetch it again"):
        data.load_mnist(folder, n_valid=2, checksums=bad)
    with pytest.raises(ValueError, match="checksums has no entry for 'train-labels-idx1-ubyte'"):
        data.load_mnist(folder, n_valid=2, checksums={"train-images-idx3-ubyte": "0" * 32})


def test_real_checksums_reject_a_fake_folder(fake):
    folder = fake[0]
    with pytest.raises(data.DataError, match="expected 6bbc9ace898e44ae57da46a324031adb"):
        data.load_mnist(folder, n_valid=2)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(fake, gz):
    folder, sums, _, contents = fake
    name = "train-images-idx3-ubyte"
    cut = contents[name][:-100]
    (folder / (name + ".gz")).unlink()
    if gz:
        (folder / (name + ".gz")).write_bytes(gzip.compress(contents[name])[:-100])
        pattern = r"truncated gzip file.*fetch it again"
    else:
        (folder / name).write_bytes(cut)
        pattern = r"is truncated: its header declares shape \(12, 28, 28\).*needs 9424 bytes"
    with pytest.raises(data.DataError, match=pattern):
        data.load_mnist(folder, n_valid=2, checksums=sums)


def test_truncated_header_and_trailing_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(data.DataError, match="truncated inside its header: 3 dimensions need 16"):
        data.read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"\x00\x00")
    with pytest.raises(data.DataError, match="too short to be an IDX file"):
        data.read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"xx")
    with pytest.raises(data.DataError, match="has 2 bytes after the data"):
        data.read_idx(tmp_path / "c")


def test_wrong_magic_number(fake):
    folder, sums, _, contents = fake
    name = "t10k-images-idx3-ubyte"
    (folder / (name + ".gz")).write_bytes(gzip.compress(b"\x01\x02" + contents[name][2:]))
    with pytest.raises(data.DataError, match=r"wrong magic number 0x01020803.*not an IDX file"):
        data.load_mnist(folder, n_valid=2, checksums=sums)


def test_wrong_dimension_count(fake):
    folder, sums, _, _ = fake
    name = "train-labels-idx1-ubyte"
    (folder / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(np.zeros((12, 1), np.uint8))))
    with pytest.raises(data.DataError, match=r"has 2 dimensions \(shape \(12, 1\)\); expected 1"):
        data.load_mnist(folder, n_valid=2, checksums=None)


def test_wrong_image_shape(fake):
    folder, _, _, _ = fake
    name = "t10k-images-idx3-ubyte"
    (folder / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 27), np.uint8))))
    with pytest.raises(data.DataError, match=r"has shape \(5, 28, 27\); expected \(N, 28, 28\)"):
        data.load_mnist(folder, n_valid=2, checksums=None)


def test_inconsistent_counts_and_bad_labels(fake):
    folder, _, _, _ = fake
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(data.DataError, match="MNIST test: 5 images but 4 labels"):
        data.load_mnist(folder, n_valid=2, checksums=None)
    labels.write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8))))
    with pytest.raises(data.DataError, match="contain 10; expected digits 0-9"):
        data.load_mnist(folder, n_valid=2, checksums=None)
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(ValueError, match="leave no training data out of 12"):
        data.load_mnist(folder, n_valid=12, checksums=None)


# ---------------------------------------------------------------------------------------------
# Download from a local HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'served' on 127.0.0.1 at an ephemeral port; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_into_cache(server, tmp_path, monkeypatch):
    served, url = server
    contents, arrays = fake_mnist()
    write_folder(served, contents)
    cache = tmp_path / "cache"
    ds = data.load_mnist(cache, download=True, base_url=url, n_valid=2, checksums=md5s(contents))
    assert sorted(os.listdir(cache)) == sorted(name + ".gz" for name in contents)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    # A second load reads the cache; the server is not needed (base URL now unreachable).
    again = data.load_mnist(cache, download=True, base_url="http://127.0.0.1:9/",
                            n_valid=2, checksums=md5s(contents))
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    # Without a path, download=True uses $XDG_CACHE_HOME/ppl/mnist and $PPL_MNIST_URL.
    monkeypatch.delenv(data.MNIST_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(data.MNIST_URL_ENV, url)
    assert data.mnist_dir(download=True) == str(tmp_path / "xdg" / "ppl" / "mnist")
    data.load_mnist(download=True, n_valid=2, checksums=md5s(contents))
    assert len(os.listdir(tmp_path / "xdg" / "ppl" / "mnist")) == 4


def test_download_with_wrong_checksum_saves_nothing(server, tmp_path):
    served, url = server
    contents, _ = fake_mnist()
    write_folder(served, contents)
    bad = dict(md5s(contents), **{"train-images-idx3-ubyte": "f" * 32})
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match=r"Rejected the download of 'http://127\.0\.0\.1:\d+/"
                       r"train-images-idx3-ubyte\.gz', nothing was saved.*expected f{32}"):
        data.load_mnist(cache, download=True, base_url=url, checksums=bad)
    assert os.listdir(cache) == []  # no partial or temporary file left


def test_download_truncated_and_missing_on_server(server, tmp_path):
    served, url = server
    contents, _ = fake_mnist()
    write_folder(served, contents)
    name = "train-images-idx3-ubyte.gz"
    (served / name).write_bytes((served / name).read_bytes()[:-50])
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="Rejected the download.*truncated gzip"):
        data.load_mnist(cache, download=True, base_url=url, checksums=md5s(contents))
    assert os.listdir(cache) == []
    (served / name).unlink()
    with pytest.raises(data.DataError, match=r"HTTP 404.*PPL_MNIST_URL"):
        data.load_mnist(cache, download=True, base_url=url, checksums=md5s(contents))
    assert os.listdir(cache) == []


# ---------------------------------------------------------------------------------------------
# Binarization


def test_binarize_is_bernoulli_with_the_given_key(key):
    x = jnp.full((200, 500), 0.3, jnp.float32)
    b = data.binarize(key, x)
    assert b.shape == x.shape and b.dtype == jnp.float32
    assert set(np.unique(np.asarray(b))) <= {0.0, 1.0}
    # Mean of 1e5 Bernoulli(0.3): standard error 0.00145; the suite's z (tests/_stats.py).
    assert abs(float(b.mean()) - 0.3) < Z * np.sqrt(0.3 * 0.7 / x.size)
    np.testing.assert_array_equal(b, data.binarize(key, x))
    assert not np.array_equal(b, data.binarize(jax.random.split(key)[0], x))
    edges = jnp.array([0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.jit(data.binarize)(key, edges), edges)
    with pytest.raises(TypeError, match=r"got dtype uint8.*x / 255\.0"):
        data.binarize(key, np.zeros(3, np.uint8))


def test_binarize_static_threshold():
    x = np.array([0.0, 0.5, 0.51, 1.0])
    np.testing.assert_array_equal(data.binarize_static(x), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(data.binarize_static(x, threshold=0.2), [0.0, 1.0, 1.0, 1.0])
    assert data.binarize_static(x).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Minibatches


def test_batches_cover_a_permutation(key):
    x = np.arange(10)
    y = np.arange(10) * 2
    out = list(data.batches(key, (x, y), 3))
    assert len(out) == 3 and all(bx.shape == (3,) for bx, _ in out)
    for bx, by in out:
        np.testing.assert_array_equal(by, 2 * bx)
    seen = np.concatenate([bx for bx, _ in out])
    assert len(set(seen.tolist())) == 9
    full = list(data.batches(key, {"x": x}, 3, drop_remainder=False))
    assert [len(b["x"]) for b in full] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.sort(np.concatenate([b["x"] for b in full])), x)
    # The order is a function of the key: same key, same order; another key, another order.
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in full])[:9], seen)
    other = np.concatenate(list(data.batches(jax.random.split(key)[1], x, 5)))
    assert not np.array_equal(other, np.concatenate(list(data.batches(key, x, 5))))
    jax_leaf = next(data.batches(key, jnp.arange(10.0), 4))
    assert isinstance(jax_leaf, jax.Array) and jax_leaf.shape == (4,)


def test_batches_errors_are_raised_at_the_call(key):
    with pytest.raises(ValueError, match="batch_size=11 is larger than the 10 examples"):
        data.batches(key, np.arange(10), 11)
    assert len(list(data.batches(key, np.arange(10), 11, drop_remainder=False))) == 1
    with pytest.raises(ValueError, match="same leading dimension"):
        data.batches(key, (np.arange(10), np.arange(9)), 2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.batches(key, np.arange(10), 0)


def test_batch_indices(key):
    idx = data.batch_indices(key, 10, 3)
    assert idx.shape == (3, 3) and idx.dtype == jnp.int32
    assert len(set(np.asarray(idx).ravel().tolist())) == 9
    jitted = jax.jit(data.batch_indices, static_argnums=(1, 2))(key, 10, 3)
    np.testing.assert_array_equal(jitted, idx)


# ---------------------------------------------------------------------------------------------
# The real MNIST (read once per module; skipped when absent)


@pytest.fixture(scope="module")
def real_mnist():
    folder = os.environ.get(data.MNIST_DIR_ENV) or str(REPO / ".." / "shared" / "data" / "mnist")
    if not os.path.isdir(folder):
        pytest.skip(f"real MNIST not found at {folder!r}: set {data.MNIST_DIR_ENV} or place "
                    "the files at <repo>/../shared/data/mnist")
    # Verifies the canonical checksums of all four files (train 60k and test 10k).
    return data.load_mnist(folder)


def test_real_mnist_shapes_dtypes_and_values(real_mnist):
    ds = real_mnist
    assert ds.x_train.shape == (50_000, 784) and ds.x_valid.shape == (10_000, 784)
    assert ds.x_test.shape == (10_000, 784) and ds.image_shape == (28, 28)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_valid, ds.y_valid), (ds.x_test, ds.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(np.unique(y), np.arange(10))
    np.testing.assert_array_equal(ds.y_train[:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(ds.y_test[:5], [7, 2, 1, 0, 4])
    assert abs(float(ds.x_test.mean()) - 0.1325) < 1e-3  # the well-known test-set mean


def test_real_mnist_static_binarization(real_mnist):
    small = data.Dataset("mnist", real_mnist.x_test[:100], real_mnist.y_test[:100],
                         real_mnist.x_test[:0], real_mnist.y_test[:0], real_mnist.x_test[:100],
                         real_mnist.y_test[:100], image_shape=(28, 28))
    b = small.binarized("bernoulli", seed=0)
    assert set(np.unique(b.x_train)) == {0.0, 1.0}
    assert b.images(b.x_test).shape == (100, 28, 28)
