"""Turn `lct curate INPUT...` into a sorted, de-duplicated list of film URIs.

INPUT may be a video file, a folder (searched recursively for known extensions), a glob
(`films/**/*.mp4`), or an fsspec URL (`s3://bucket/prefix/`, `gs://...`, `file://...`).
Local paths become absolute POSIX paths; remote ones keep their URL. The order is sorted
so that a run is deterministic whatever order the shell expanded the arguments in.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import fsspec

from dataprep.names import safe_filename

GLOB_CHARS = set("*?[")
DRIVERS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
           "http": "aiohttp", "https": "aiohttp"}  # fsspec protocol -> the package that implements it


class SourceError(ValueError):
    """An input URL that cannot be listed: its fsspec driver is not installed, the protocol is unknown,
    or the source does not answer. Nothing was curated."""


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def absolute(uri: str) -> str:
    """A local path or glob made absolute (`~` expanded); a URL unchanged. The CLI and the flows apply it
    to every path a user gives: Ray workers and Ray jobs run in other folders than the user's."""
    return uri if is_url(uri) else os.path.abspath(os.path.expanduser(uri))


def _walk_local(root: Path, extensions: tuple[str, ...]) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(extensions):
                found.append(os.path.abspath(Path(dirpath, name)))
    return found


def remote_fs(url: str):
    """(fsspec filesystem, paths) of `url`; SourceError naming the package when its driver is missing."""
    protocol = url.split("://", 1)[0].lower()
    try:
        fs, _, paths = fsspec.get_fs_token_paths(url)
    except ImportError as e:
        package = DRIVERS.get(protocol)
        need = f"the fsspec driver `{package}` (pip install {package})" if package else "its fsspec driver"
        raise SourceError(f"{url}: reading {protocol}:// needs {need}, which is not installed ({e})") from None
    except ValueError as e:  # "Protocol not known: foo"
        raise SourceError(f"{url}: {e}; known protocols include s3://, gs://, http(s)://, file://") from None
    return fs, paths


def _walk_remote(url: str, extensions: tuple[str, ...]) -> list[str]:
    fs, paths = remote_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = []
    for path in paths:
        try:
            candidates = fs.find(path) if fs.isdir(path) else [path]
        except OSError as e:  # connection refused, DNS, timeouts (aiohttp's errors are OSErrors), denied
            raise SourceError(f"cannot list {url}: {type(e).__name__}: {e}. Is the host reachable and the URL "
                              "right (and, for a bucket, are the credentials set)?") from None
        for p in candidates:
            if p.lower().endswith(extensions):
                found.append(f"{protocol}://{p}" if not p.startswith(f"{protocol}://") else p)
    return found


def list_films(inputs: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Expand inputs to film URIs. Raises FileNotFoundError naming every input that matched nothing,
    SourceError for a URL whose driver is missing or whose host does not answer.

    A path given explicitly as a file is kept whatever its extension (the probe stage
    decides whether it is a video); folders and globs only pick up `extensions`.
    """
    extensions = tuple(e.lower() for e in extensions)
    films: set[str] = set()
    missing: list[str] = []
    for item in inputs:
        item = item[len("file://"):] if item.startswith("file://") else item
        if is_url(item):
            found = _walk_remote(item, extensions)
        elif GLOB_CHARS & set(item):
            found = []
            for match in glob.glob(item, recursive=True):
                p = Path(match)
                if p.is_dir():
                    found += _walk_local(p, extensions)
                elif match.lower().endswith(extensions):
                    found.append(os.path.abspath(p))
        elif Path(item).is_dir():
            found = _walk_local(Path(item), extensions)
        elif Path(item).exists() or Path(item).is_symlink():
            found = [os.path.abspath(item)]
        else:
            found = []
        if not found:
            missing.append(item)
        films.update(found)
    if missing:
        raise FileNotFoundError(
            "these inputs matched no film: " + ", ".join(repr(m) for m in missing)
            + f" (folders and globs pick up {', '.join(extensions)})"
        )
    return sorted(films)


def local_copy(uri: str, cache_dir: Path) -> Path:
    """A local path for `uri`: itself when local, else a download into `cache_dir` (same name each time)."""
    if not is_url(uri):
        return Path(uri)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / safe_filename(uri, keep_suffix=True)
    if not target.exists():
        tmp = target.with_suffix(target.suffix + ".part")
        with fsspec.open(uri, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target
