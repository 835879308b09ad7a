"""Loading MNIST from the standard IDX files, with checksums and optional download.

Private module: the public names are re-exported by :mod:`ppl.models.data`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ._dataset import Dataset, _check_counts
from ._download import download as _download
from ._idx import DataError, DataNotFoundError, expect_shape, read_idx

MNIST_DIR_ENV = "PPL_MNIST_DIR"
MNIST_URL_ENV = "PPL_MNIST_URL"
# A mirror of the original files (the one torchvision uses). Any mirror works: the loader
# verifies the uncompressed bytes, not the gzip wrapper.
DEFAULT_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# Role -> file name without ".gz".
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# File name -> MD5 of the uncompressed bytes (the canonical MNIST values).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

_HOW_TO_GET_MNIST = (
    "To get MNIST: pass its folder (load_mnist(path=DIR), or --mnist-dir DIR on the command "
    f"line), or set the environment variable {MNIST_DIR_ENV}=DIR, or download it with "
    f"load_mnist(download=True, base_url=URL) (default URL {DEFAULT_MNIST_URL}; or set "
    f"{MNIST_URL_ENV}). The folder holds the four IDX files "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz]."
)



def mnist_dir(path: str | os.PathLike | None = None, *, download: bool = False) -> str:
    """Return the MNIST folder: ``path`` if given, else ``$PPL_MNIST_DIR``, else (only with
    ``download=True``) the cache ``$XDG_CACHE_HOME/ppl/mnist`` (default ``~/.cache/ppl/mnist``).

    Raises:
      DataNotFoundError: no folder given and ``download`` is false; the message says how to
        get the data.
    """
    if path is not None:
        return os.fspath(path)
    from_env = os.environ.get(MNIST_DIR_ENV)
    if from_env:
        return from_env
    if download:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(cache, "ppl", "mnist")
    raise DataNotFoundError(
        f"No MNIST folder given: the argument path is None and {MNIST_DIR_ENV} is not set. "
        + _HOW_TO_GET_MNIST
    )


def load_mnist(
    path: str | os.PathLike | None = None,
    *,
    n_valid: int = 10_000,
    binarization: str | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    download: bool = False,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = MNIST_MD5,
) -> Dataset:
    """Load MNIST from the four standard IDX files, verifying their checksums.

    Each file is looked for as ``<name>.gz`` then ``<name>`` in the folder (see
    :func:`mnist_dir`); gzip or raw is told by the magic bytes, not by the name.

    Args:
      path: the folder; ``None`` uses ``$PPL_MNIST_DIR`` (or the cache with ``download``).
      n_valid: the last ``n_valid`` of the 60,000 training images are the validation split.
      binarization: ``None`` keeps intensities in ``[0, 1]``; ``"threshold"`` or
        ``"bernoulli"`` binarizes statically (see :meth:`Dataset.binarized`, which takes
        ``threshold`` and ``seed``).
      download: fetch missing files from ``base_url`` into the folder first (temporary file,
        checksum verified, atomic rename). Files already present are never replaced.
      base_url: where ``<name>.gz`` files live; default ``$PPL_MNIST_URL`` or
        :data:`DEFAULT_MNIST_URL`.
      checksums: file name (without ``.gz``) -> MD5 of the uncompressed bytes; default the
        canonical values; ``None`` skips verification (e.g. for a modified copy).

    Returns:
      A :class:`Dataset` named ``"mnist"``: images ``float32`` in ``[0, 1]`` (pixel / 255) of
      shape ``(N, 784)``, ``image_shape=(28, 28)``, labels ``int32`` in ``[0, 10)``; with the
      defaults 50,000 train, 10,000 valid, 10,000 test.

    Raises:
      DataNotFoundError: a file is missing (the message lists the paths tried and the fix).
      DataError: a file is truncated, corrupt, has the wrong magic number, shape or checksum,
        or a download failed. No partial data is returned.
    """
    md5 = {name: _md5_for(checksums, name) for name in MNIST_FILES.values()}  # fail early
    folder = mnist_dir(path, download=download)
    if download:
        base_url = base_url or os.environ.get(MNIST_URL_ENV) or DEFAULT_MNIST_URL
    arrays = {}
    for role, name in MNIST_FILES.items():
        file = _find_or_download(folder, name, download=download, base_url=base_url,
                                 md5=md5[name])
        arrays[role] = read_idx(file, md5=md5[name],
                                ndim=3 if role.endswith("images") else 1)
        expected = (None, 28, 28) if role.endswith("images") else (None,)
        expect_shape(arrays[role], expected, source=file)
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"MNIST {split}: {len(images)} images but {len(labels)} labels in {folder!r}. "
                "The files come from different versions or one is corrupt; fetch them again."
            )
        if labels.size and labels.max() >= 10:
            raise DataError(
                f"MNIST {split} labels in {folder!r} contain {int(labels.max())}; expected "
                "digits 0-9. The labels file is corrupt; fetch it again."
            )
    n_train = len(arrays["train_images"])
    _check_counts("mnist", n_train, n_valid=n_valid)

    def flat(images):
        return (images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0))

    x_full, y_full = flat(arrays["train_images"]), arrays["train_labels"].astype(np.int32)
    cut = n_train - n_valid
    dataset = Dataset(
        "mnist", x_full[:cut], y_full[:cut], x_full[cut:], y_full[cut:],
        flat(arrays["test_images"]), arrays["test_labels"].astype(np.int32),
        image_shape=(28, 28))
    if binarization is not None:
        dataset = dataset.binarized(binarization, threshold=threshold, seed=seed)
    return dataset


def _md5_for(checksums: Mapping[str, str] | None, name: str) -> str | None:
    if checksums is None:
        return None
    if name not in checksums:
        raise ValueError(
            f"checksums has no entry for {name!r} (keys: {sorted(checksums)}). Give the MD5 of "
            "the uncompressed file for each of the four names, or checksums=None to skip."
        )
    return checksums[name]


def _find_or_download(folder: str, name: str, *, download: bool, base_url: str | None,
                      md5: str | None) -> str:
    tried = [os.path.join(folder, name + ".gz"), os.path.join(folder, name)]
    for candidate in tried:
        if os.path.isfile(candidate):
            return candidate
    if download:
        url = base_url.rstrip("/") + "/" + name + ".gz"
        return _download(url, tried[0], md5=md5)
    note = "" if os.path.isdir(folder) else f" (the folder {folder!r} does not exist)"
    raise DataNotFoundError(
        f"MNIST file {name!r} not found; tried {tried[0]!r} and {tried[1]!r}{note}. "
        + _HOW_TO_GET_MNIST
    )
