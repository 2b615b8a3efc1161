"""Checksums of checkpoint files: computed while the bytes are written, checked when they are read.

New manifests record ``xxh3_128`` (xxHash's 128-bit XXH3, from the ``xxhash`` package): on the
63 MB W2 state it hashes at about 14 GB/s here, against 1.2 GB/s for sha256 and BLAKE3 (one
thread). The checksum detects torn, truncated and corrupted files; it is not a defence against
tampering (whoever can rewrite a file can rewrite the manifest too); that defence is that loading
never unpickles. Manifests written with ``sha256`` by earlier versions still verify.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

#: the algorithm of new manifests
HASH = "xxh3_128"
#: every algorithm a manifest record may name (``sha256``: manifests of earlier versions)
ALGORITHMS = ("xxh3_128", "sha256")
#: errno values that mean "no space left" (the device, a quota, a file-size limit)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_CHUNK = 1 << 23


def new_hasher(algorithm: str = HASH) -> Any:
    """A fresh incremental hasher (``update``/``hexdigest``) of *algorithm*."""
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def record_algorithm(record: Any) -> str | None:
    """The algorithm a manifest record (``{"size": n, "<algorithm>": hexdigest}``) names, else ``None``."""
    if not isinstance(record, dict) or not isinstance(record.get("size"), int):
        return None
    return next((a for a in ALGORITHMS if isinstance(record.get(a), str)), None)


def digest_bytes(data: bytes | memoryview, algorithm: str = HASH) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return str(hasher.hexdigest())


def digest_file(path: Path, algorithm: str = HASH) -> str:
    hasher = new_hasher(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return str(hasher.hexdigest())


def file_record(path: Path, algorithm: str = HASH) -> dict[str, Any]:
    """The manifest record of a file already on disk (read back once)."""
    return {"size": path.stat().st_size, algorithm: digest_file(path, algorithm)}


def out_of_space(exc: BaseException | None) -> int | None:
    """The errno (of :data:`NO_SPACE`) when *exc*, or an exception it was raised from, says the
    disk, a quota or the file-size limit is full; else ``None``."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class HashingWriter:
    """A new file that hashes every byte as it is written. :meth:`seal` fsyncs and closes it and
    returns its manifest record. A write that fails for lack of space is remembered in
    :attr:`failure` (torch's serializer may re-raise it as another error)."""

    def __init__(self, path: Path, algorithm: str = HASH):
        self.path = path
        self.algorithm = algorithm
        self.size = 0
        self.failure: OSError | None = None
        self._hasher = new_hasher(algorithm)
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by seal/close)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        try:
            written = 0
            while written < len(view):  # a raw file may write less than asked
                written += self._file.write(view[written:])
        except OSError as exc:
            self.failure = exc
            raise
        self.size += written
        return written

    def flush(self) -> None:
        """Nothing is buffered (torch.save calls it)."""

    def seal(self) -> dict[str, Any]:
        """fsync and close the file; its manifest record (size and checksum)."""
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self.failure = exc
            raise
        finally:
            self._file.close()
        return {"size": self.size, self.algorithm: self._hasher.hexdigest()}

    def close(self) -> None:
        self._file.close()
