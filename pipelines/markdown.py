"""Text taken from data (a film name, an error, a path) made literal, one-line Markdown.

The one escaper for every Markdown lct writes with such text in it: the ingest flow's summary
artifact (pipelines/flows/ingest.py) and the demo report (pipelines/report.py).
"""

from __future__ import annotations

import re

MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>|~])")


def md_text(text: str) -> str:
    """`text` as literal, one-line Markdown, safe in a table cell: line breaks become a visible ⏎, and
    every character Markdown or a table would read (` | * _ [ ] < > \\ ...) is backslash-escaped."""
    one_line = re.sub(r"\r\n|\r|\n", " ⏎ ", str(text))
    return MD_SPECIAL.sub(r"\\\1", one_line)
