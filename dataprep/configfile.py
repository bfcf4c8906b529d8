"""Config files: YAML read with file:line errors, did-you-mean hints for unknown keys, renamed keys.

Shared by every strict pydantic config tree (dataprep.config's CurateConfig, training.config's
TrainConfig), so each package reads its own YAML through one set of rules.
"""

from __future__ import annotations

import difflib
import typing
import warnings
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


def renamed(data, section: str, names: dict[str, str]):
    """A config dict with keys renamed in a later version moved to their new names (old -> new), each
    with a FutureWarning naming the new key, so configs and runs written before still load."""
    if not isinstance(data, dict):
        return data
    for old, new in names.items():
        if old not in data:
            continue
        if new in data:
            raise ValueError(f"{section}.{old} is the old name of {section}.{new}: give only {section}.{new}")
        warnings.warn(f"{section}.{old} is deprecated: it is now {section}.{new} (same meaning); rename the key "
                      "in your config", FutureWarning, stacklevel=2)
        data = {new if key == old else key: value for key, value in data.items()}
    return data


def set_dotted(data: dict, overrides: dict) -> dict:
    """Set {"section.key": value} overrides into a nested config dict (None = not given); returns it."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def load_yaml(cls: type[BaseModel], path: str | Path):
    """Validate a YAML file into `cls`; errors name the file and the bad keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return cls.model_validate(data)


def read_yaml(path: str | Path):
    """yaml.safe_load of a file; a syntax error becomes a ValueError naming file:line:column."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{where}: YAML syntax error: {problem} (fix the file; YAML needs `key: value` "
                         "lines, consistent indentation and quotes around text with ': ' or '#')") from e


def key_hints(err: ValidationError, cls: type[BaseModel]) -> list[str]:
    """One "did you mean" line per unknown key of `err` (a validation error of `cls`).

    `model.prest` -> "model.prest: unknown key; did you mean model.preset?"; without a close
    match the line lists the keys that section knows.
    """
    hints = []
    for e in err.errors():
        if e["type"] != "extra_forbidden":
            continue
        *parents, bad = e["loc"]
        section: type[BaseModel] | None = cls
        for key in parents:
            if section is not None and not isinstance(key, int):  # list indices stay on the item's model
                section = _section_model(section, str(key))
        if section is None:
            continue
        known = [f.alias or name for name, f in section.model_fields.items()]
        close = difflib.get_close_matches(str(bad), known, n=1, cutoff=0.6)
        where = ".".join(str(k) for k in e["loc"])
        if close:
            hints.append(f"{where}: unknown key; did you mean {'.'.join(str(k) for k in [*parents, close[0]])}?")
        else:
            hints.append(f"{where}: unknown key; this section knows {known}")
    return hints


def explain(err: ValidationError, cls: type[BaseModel]) -> str:
    """pydantic's message for `err`, then the did-you-mean lines of its unknown keys."""
    hints = key_hints(err, cls)
    return str(err) + ("\n" + "\n".join(hints) if hints else "")


def _section_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The pydantic model a field of `model` holds (through Optional / list[...]), or None."""
    field = model.model_fields.get(key) or next(
        (f for f in model.model_fields.values() if f.alias == key), None)
    todo = [field.annotation] if field is not None else []
    while todo:
        annotation = todo.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        todo.extend(typing.get_args(annotation))
    return None
