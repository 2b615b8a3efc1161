"""Putting checkpoints in place and taking them away, so that a visible ``checkpoint-N`` is always complete.

A checkpoint is written into ``.tmp-checkpoint-N``, fsync'd, then renamed to ``checkpoint-N``
(:func:`publish`); a directory is deleted by renaming it to a temporary name first
(:func:`remove_dir`). Whatever a crash leaves behind starts with ``.tmp-`` and is cleaned up (or,
for a checkpoint set aside by an interrupted replacement, put back) by :func:`tidy_output_dir`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hooktrain.checkpointing.format import (
    PREFIX,
    TMP_PREFIX,
    checkpoint_step,
    is_own_checkpoint,
    list_checkpoints,
)
from hooktrain.core.errors import CheckpointError

logger = logging.getLogger("hooktrain")

#: the temporary directories hooktrain creates in output_dir (removed at the next start)
TMP_KINDS = tuple(f"{TMP_PREFIX}{kind}" for kind in (f"{PREFIX}-", "replaced-", "deleted-", "model-"))


def fsync_dir(path: Path) -> None:
    """Make the entries of directory *path* durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_dir(path: Path) -> None:
    """Delete a directory so that it disappears at once: rename it to a temporary name first."""
    doomed = path.with_name(f"{TMP_PREFIX}deleted-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Rename the complete *tmp* to *final*, replacing an older checkpoint of the same step safely."""
    out = final.parent
    if final.exists():
        if not is_own_checkpoint(final):
            raise CheckpointError(
                f"{final} exists and hooktrain did not write it (no hooktrain manifest.json): it is "
                "left alone; move it away or choose another output_dir"
            )
        aside = out / f"{TMP_PREFIX}replaced-{final.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)  # a crash now leaves `aside`, restored at the next start
        os.replace(tmp, final)
        fsync_dir(out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(out)


def tidy_output_dir(output_dir: str | os.PathLike[str]) -> None:
    """Remove what an interrupted save, replacement or deletion left in *output_dir*.

    A checkpoint that was set aside to be replaced is put back if its replacement never landed.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        name = entry.name
        if not name.startswith(TMP_PREFIX):
            continue
        if name.startswith(f"{TMP_PREFIX}replaced-{PREFIX}-") and entry.is_dir():
            final = out / name[len(f"{TMP_PREFIX}replaced-"):]
            if checkpoint_step(final) is not None and not final.exists():
                os.replace(entry, final)
                fsync_dir(out)
                logger.warning("restored %s: its replacement was interrupted", final)
                continue
        if name.startswith(TMP_KINDS) and entry.is_dir():
            logger.info("removing %s, left by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)


def rotate_checkpoints(
    output_dir: str | os.PathLike[str], limit: int | None, protected: Iterable[str] = ()
) -> list[Path]:
    """Delete the oldest of hooktrain's checkpoints beyond *limit*; return what was deleted.

    Only complete ``checkpoint-N`` directories with a hooktrain manifest take part (a checkpoint
    being written is not one yet), ordered by step number. The newest one and every name in
    *protected* (names or paths) are kept even when that leaves more than *limit*. ``None`` or a
    limit below 1 deletes nothing.
    """
    if not limit or limit < 1:
        return []
    ours = [path for _, path in list_checkpoints(output_dir) if is_own_checkpoint(path)]
    if len(ours) <= limit:
        return []
    keep = {Path(str(name)).name for name in protected if name}
    keep.add(ours[-1].name)
    deletable = [path for path in ours if path.name not in keep]
    doomed = deletable[: max(0, len(ours) - limit)]
    for path in doomed:
        logger.debug("deleting %s (save_total_limit=%d)", path, limit)
        remove_dir(path)
    return doomed


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of *path* (or its nearest existing parent); ``None`` if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def directory_bytes(directory: Path) -> int:
    """The total size of the files directly in *directory* (0 when it is gone)."""
    try:
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    except OSError:
        return 0
