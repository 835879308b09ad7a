"""Reading IDX files (the MNIST format), gzip-compressed or raw, with checksum verification.

Private module: the public names are re-exported by :mod:`ppl.models.data`.

The IDX format: two zero bytes, a type code, the number of dimensions ``d``, then ``d``
big-endian ``uint32`` sizes, then the values in C order, big-endian.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(ValueError):
    """A data file or data set is unusable: wrong checksum, truncated, wrong format or shape.

    Raised instead of returning partial data. The message names the file and the fix.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file was not found. The message lists the paths tried and how to get the data.

    Subclasses both :class:`DataError` (so ``except ValueError`` catches it) and
    :class:`FileNotFoundError` (so ``except OSError`` catches it).
    """


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the uncompressed contents of ``path``.

    Gzip is detected by the file's first two bytes (``1f 8b``), not by its name: a raw file
    named ``*.gz`` or a gzip file without the suffix both read correctly.

    Raises:
      DataNotFoundError: ``path`` does not exist.
      DataError: the gzip stream is truncated or corrupt.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"Data file not found: {path!r}.") from None
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except EOFError as e:
        raise DataError(
            f"{path!r} is a truncated gzip file ({len(data)} bytes; {e}). The download or copy "
            "was probably interrupted: delete the file and fetch it again."
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{path!r} starts with the gzip magic bytes but is not a valid gzip stream ({e}). "
            "Delete the file and fetch it again."
        ) from None


def md5_hex(data: bytes) -> str:
    """Return the hexadecimal MD5 digest of ``data`` (a checksum, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes.

    Returns:
      A writable numpy array in native byte order, with the dtype of the IDX type code
      (``uint8`` for MNIST) and the shape stored in the header.

    Raises:
      DataError: wrong magic number, unknown type code, truncated header or data, or trailing
        bytes. ``source`` names the file in the message.
    """
    if len(data) < 4:
        raise DataError(
            f"{source!r} is too short to be an IDX file ({len(data)} bytes; the header alone "
            "has at least 4). The file is truncated or empty: fetch it again."
        )
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES:
        raise DataError(
            f"{source!r} has the wrong magic number 0x{data[:4].hex()}: an IDX file starts with "
            "two zero bytes, a type code in {08, 09, 0b, 0c, 0d, 0e} and the number of "
            "dimensions (MNIST images: 0x00000803, labels: 0x00000801). This is not an IDX "
            "file, or images and labels were swapped for another file."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source!r} is truncated inside its header: {ndim} dimensions need "
            f"{header_len} header bytes, the file has {len(data)}. Fetch it again."
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise DataError(
            f"{source!r} is truncated: its header declares shape {shape} of {dtype.name}, "
            f"which needs {expected} bytes, but it has {len(data)}. The download or copy was "
            "probably interrupted: delete the file and fetch it again."
        )
    if len(data) > expected:
        raise DataError(
            f"{source!r} has {len(data) - expected} bytes after the data its header declares "
            f"(shape {shape} of {dtype.name}). The file is corrupt or not an IDX file."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, a writable copy


def read_idx(
    path: str | os.PathLike,
    *,
    md5: str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw (detected by magic bytes).

    Args:
      path: the file.
      md5: the expected hexadecimal MD5 of the *uncompressed* bytes; ``None`` skips the check.
      ndim: the expected number of dimensions (MNIST images: 3, labels: 1); ``None`` skips it.

    Returns:
      A numpy array with the header's shape and type (``uint8`` for MNIST).

    Raises:
      DataNotFoundError: the file does not exist.
      DataError: truncated or corrupt file, wrong magic number, wrong number of dimensions,
        or a checksum mismatch. Nothing is returned in these cases.
    """
    source = os.fspath(path)
    data = read_bytes(source)
    array = parse_idx(data, source=source)
    if ndim is not None and array.ndim != ndim:
        raise DataError(
            f"{source!r} has {array.ndim} dimensions (shape {array.shape}); expected {ndim}. "
            "An images file has 3 (count, rows, columns) and a labels file has 1: check that "
            "the file names match their contents."
        )
    if md5 is not None:
        check_md5(data, md5, source=source)
    return array


def check_md5(data: bytes, expected: str, *, source: str) -> None:
    """Raise :class:`DataError` if the MD5 of ``data`` (uncompressed bytes) is not ``expected``."""
    actual = md5_hex(data)
    if actual != expected.lower():
        raise DataError(
            f"Checksum mismatch for {source!r}: the MD5 of its uncompressed bytes is {actual}, "
            f"expected {expected.lower()}. The file is corrupt or a different version: delete "
            "it and fetch it again (e.g. load_mnist(..., download=True))."
        )


def expect_shape(array: np.ndarray, shape: Sequence[int | None], *, source: str) -> None:
    """Raise :class:`DataError` unless ``array.shape`` matches ``shape`` (``None`` = any size)."""
    ok = array.ndim == len(shape) and all(
        want is None or have == want for have, want in zip(array.shape, shape)
    )
    if not ok:
        pretty = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise DataError(
            f"{source!r} has shape {array.shape}; expected {pretty}. The file is not the one "
            "its name says (e.g. not MNIST 28x28 images)."
        )
