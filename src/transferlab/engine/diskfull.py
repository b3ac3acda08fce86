"""A full disk while writing: one error naming the path and the space needed, nothing half-written.

Every file transferlab writes for itself (per-epoch backups, feature-cache
entries, a job's artifacts) is written under a temporary name and renamed
into place, so a failed write leaves no file that looks complete; ``writing``
removes the temporary one and turns ENOSPC (or a quota, EDQUOT) into
``DiskFull``.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """No space left where a file was being written; the message says where and how much."""

    def __init__(self, path: str | Path, needed: int | None, cause: BaseException | None = None):
        self.path, self.needed = Path(path), needed
        free = free_bytes(self.path)
        need = f"about {_mb(needed)} needed" if needed else "more space needed"
        super().__init__(errno.ENOSPC,
                         f"No space left on device writing {self.path} ({need}, {_mb(free)} free there). "
                         "Nothing half-written was left behind; free some space and run the same "
                         "command again: the job resumes from its last completed epoch.")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MB"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as h5py reports it (an OSError whose text names errno 28)."""
    if isinstance(e, DiskFull):
        return True
    return isinstance(e, OSError) and (e.errno in _FULL or "No space left on device" in str(e)
                                       or "errno = 28" in str(e))


@contextlib.contextmanager
def writing(path: str | Path, needed: int | None = None, partial: tuple = ()):
    """Turns a full disk inside the block into ``DiskFull(path, needed)``, removing ``partial`` files/folders."""
    try:
        yield
    except OSError as e:
        if not is_full(e) or isinstance(e, DiskFull):
            raise
        for p in partial:
            p = Path(p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        raise DiskFull(path, needed, e) from e
