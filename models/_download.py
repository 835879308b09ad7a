"""Downloading a data file into a cache folder: temporary file, checksum, atomic rename.

Private module: used by :func:`ppl.models.data.load_mnist` with ``download=True``.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request

from ._idx import DataError, md5_hex, read_bytes

_CHUNK = 1 << 20


def download(
    url: str, destination: str | os.PathLike, *, md5: str | None, timeout: float = 60.0
) -> str:
    """Download ``url`` to ``destination`` and return ``destination`` as a string.

    The bytes go to a temporary file in the destination's folder; the file is accepted only if
    the MD5 of its uncompressed contents (gzip detected by magic bytes) equals ``md5``, and is
    then moved into place with an atomic :func:`os.replace`. A failed or interrupted download
    never leaves a partial file under the final name.

    Raises:
      DataError: the server could not be reached, answered with an HTTP error, or the file's
        checksum is wrong.
    """
    destination = os.fspath(destination)
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(destination) + ".",
                               suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise DataError(
                    f"Downloading {url!r} failed: HTTP {e.code} {e.reason}. Check the base URL "
                    "(argument base_url or environment variable PPL_MNIST_URL), or copy the "
                    f"files into {folder!r} by hand."
                ) from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise DataError(
                    f"Downloading {url!r} failed: {reason}. Check the network and the base URL "
                    "(argument base_url or environment variable PPL_MNIST_URL), or copy the "
                    f"files into {folder!r} by hand."
                ) from None
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None:
            try:
                actual = md5_hex(read_bytes(tmp))
            except DataError as e:
                raise DataError(f"Rejected the download of {url!r}, nothing was saved: {e}") from None
            if actual != md5.lower():
                raise DataError(
                    f"Rejected the download of {url!r}, nothing was saved: the MD5 of its "
                    f"uncompressed bytes is {actual}, expected {md5.lower()}. The server serves "
                    "a different or corrupt file: use another base URL (argument base_url or "
                    "environment variable PPL_MNIST_URL)."
                )
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return destination
