"""`lct config show`: a config's values as YAML, each key with its description as a comment.

    print(commented_yaml(TrainConfig()))    # every default of `lct train`, loadable with --config

The text is valid YAML that loads back to `config.model_dump(mode="json", by_alias=True)`:
values are written by PyYAML (flow style), descriptions come from the pydantic fields
(`Field(description=...)`), a section without one shows its class docstring.
"""

from __future__ import annotations

import yaml
from pydantic import BaseModel


def commented_yaml(config: BaseModel) -> str:
    return "\n".join(_lines(config, 0)) + "\n"


def _lines(config: BaseModel, depth: int) -> list[str]:
    pad, out = "  " * depth, []
    dumped = config.model_dump(mode="json", by_alias=True)
    for name, field in type(config).model_fields.items():
        key, value = field.alias or name, getattr(config, name)
        note = _comment(field.description or (_doc(value) if isinstance(value, BaseModel) else ""))
        if isinstance(value, BaseModel):
            out += [f"{pad}{key}:{note}", *_lines(value, depth + 1)]
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            out.append(f"{pad}{key}:{note}")
            for item in value:
                item_lines = _lines(item, depth + 2)
                out += [f"{pad}  - {item_lines[0].lstrip()}", *item_lines[1:]]
        else:
            out.append(f"{pad}{key}: {_flow(dumped[key])}{note}")
    return out


def _flow(value) -> str:
    """One YAML value on one line (a one-item flow list, brackets cut off: PyYAML quotes as needed)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**9).strip()[1:-1]


def _doc(section: BaseModel) -> str:
    doc = type(section).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _comment(text: str) -> str:
    return f"  # {' '.join(text.split())}" if text else ""
