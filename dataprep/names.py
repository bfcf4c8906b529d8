"""The one rule for a name taken from data (a tar member's key, a film's URL) that becomes a path.

    target / f"{safe_filename(scene.key)}.png"          lct inspect's contact sheets (dataprep/sheets.py)
    cache_dir / safe_filename(uri, keep_suffix=True)     local copies of remote films (dataprep/sources.py)

Stdlib only, so every part that writes such a path can import it.
"""

from __future__ import annotations

import hashlib
import re

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")  # what a scene key written by lct looks like
SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def safe_filename(name: str, keep_suffix: bool = False) -> str:
    """A file name (no folder part) for a name taken from data.

    Scene keys written by `lct curate` (`{film_id}-{scene_index:05d}`) pass unchanged. Anything
    else (`../x`, `/abs/path`, a URL, a NUL, a leading dot, 500 characters) has every character
    outside [A-Za-z0-9_-] replaced by `_`, is cut to 80 characters and gets a hash of the original
    appended, so two different names never share a file and no name can point outside its folder.
    `keep_suffix` keeps a plain extension (`.mp4`, `.json`) at the end, for readers that look at it.
    """
    if SAFE_NAME.fullmatch(name) and ".." not in name:
        return name
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
    base = name.rsplit("/", 1)[-1]
    ext = base[base.rfind("."):] if "." in base[1:] else ""
    suffix = ext if keep_suffix and SAFE_SUFFIX.fullmatch(ext) else ""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_")[:80]  # dots too: no `..`, no hidden file
    return f"{cleaned}-{digest}{suffix}" if cleaned else f"key-{digest}{suffix}"
