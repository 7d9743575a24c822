"""Archives that a data folder may hold instead of the files themselves, extracted once, safely.

:func:`extract_archive` unpacks a .tar.gz, .tgz or .tar archive into a cache folder atomically (a temporary
folder renamed into place), refusing members that would land outside it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

__all__ = ["ARCHIVE_SUFFIXES", "is_archive", "extract_archive"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file named like a .tar.gz, .tgz or .tar archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_archive(archive: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Extract ``archive`` (.tar.gz, .tgz or .tar) once into ``cache_dir/<archive name>/`` and return that folder.

    The archive is unpacked into a temporary folder beside the target and renamed
    into place only when complete, so an interrupted run leaves nothing half-written;
    a later call finds the folder and returns at once. Members that would land
    outside the folder (absolute paths, ``..``, links) are refused.
    """
    archive, cache_dir = Path(archive), Path(cache_dir)
    target = cache_dir / _archive_stem(archive)
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache_dir))
    try:
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    for member in tar.getmembers():
                        if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts or not (
                                member.isfile() or member.isdir()):
                            raise ValueError(f"{archive}: refusing archive member {member.name!r}")
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            # not an archive, a truncated one, or a member outside the folder (data_filter)
            first = str(err).strip().splitlines()[0].rstrip(":") if str(err).strip() else "corrupt"
            raise ValueError(f"{archive}: cannot extract it as a .tar.gz or .tar archive ({type(err).__name__}: "
                             f"{first})") from None
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
