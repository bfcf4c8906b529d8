"""Which checkpoint a run resumes from: each one is checked before it is used.

    problem = check_checkpoint(RUN/checkpoints/step-000006)    # None, or why it cannot be resumed
    plan = plan_resume(RUN)                                      # the driver, before Ray Train starts

A checkpoint (layout in training/engine.py) is intact when state.json is a complete JSON record of
its own step, `latest` names the DeepSpeed tag, ds/ holds the model states and one optimizer
partition per rank of state.json's world size, every DeepSpeed file is a complete zip whose CRCs
match (read once, nothing is unpickled), and ema.safetensors, when present, is as long as its
header says. A damaged checkpoint (truncated state.json, a corrupt DeepSpeed file, a folder that
Ray Train's run snapshot lists but that was deleted) is never loaded: the run resumes from the
newest intact one and says which and why, or, when none is intact, refuses with the fix.

Under Ray Train the workers resume from `ray.train.get_checkpoint()`, the newest checkpoint of
Ray's run snapshot (RUN/checkpoints/checkpoint_manager_snapshot.json). When that is not the
checkpoint chosen here, the damaged folders and the snapshot are moved to RUN/checkpoints/damaged/
(never deleted) and the workers are told the chosen folder instead (`plan.resume_from`).
Reads only files: no torch, DeepSpeed or Ray import.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TAG, UNIVERSAL_TAG, STATE = "ds", "ds_universal", "state.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"      # Ray Train's run snapshot under RUN/checkpoints
DAMAGED = "damaged"
STATE_KEYS = {"step": int, "world_size": int, "data": dict}
NAME = re.compile(r"step-(\d+)$")


class ResumeError(ValueError):
    """No checkpoint of the run can be resumed from; nothing was trained."""


def check_checkpoint(directory: Path) -> str | None:
    """None when `directory` is an intact, complete checkpoint; else what is wrong with it."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    path = directory / STATE
    if not path.is_file():
        return f"{path} is missing (the checkpoint was never completed)"
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        return f"{path} is not valid JSON (truncated?): {e}"
    if not isinstance(state, dict):
        return f"{path} holds a {type(state).__name__}, not a JSON object"
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            return f"{path} lacks {key!r} (a {kind.__name__})"
    match = NAME.match(directory.name)
    if match and int(match.group(1)) != state["step"]:
        return f"{path} says step {state['step']} in a folder named {directory.name}"
    tag = directory / "latest"
    if not tag.is_file() or tag.read_text().strip() != TAG:
        return f"{tag} is missing or does not name the DeepSpeed tag {TAG!r}"
    ds = directory / TAG
    files = sorted(ds.glob("*.pt")) if ds.is_dir() else []
    if not any(f.name.endswith("model_states.pt") for f in files):
        return f"{ds} has no DeepSpeed model states (*model_states.pt)"
    optim = [f for f in files if f.name.endswith("optim_states.pt")]
    if len(optim) != state["world_size"]:
        return (f"{ds} has {len(optim)} ZeRO optimizer partitions (*optim_states.pt) for the "
                f"world size {state['world_size']} of {STATE}")
    for f in files:
        if problem := _zip_problem(f):
            return f"{f} is damaged: {problem}"
    ema = directory / "ema.safetensors"
    if ema.is_file() and (problem := _safetensors_problem(ema)):
        return f"{ema} is damaged: {problem}"
    return None


def _zip_problem(path: Path) -> str | None:
    """torch.save writes a zip archive with a CRC per record: check them all, unpickle nothing."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a complete zip archive ({e})"
    return f"record {bad} fails its CRC check" if bad else None


def _safetensors_problem(path: Path) -> str | None:
    """The header (8-byte length + JSON) and the file length it implies."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return f"header length {n} does not fit in {size} bytes"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        return f"unreadable header ({e})"
    return None if 8 + n + end == size else f"{size} bytes, the header describes {8 + n + end}"


def snapshot_names(checkpoints: Path) -> tuple[list[str], str | None] | None:
    """(checkpoint folders listed in Ray Train's run snapshot, the latest of them), or None without a snapshot.
    A snapshot that cannot be read lists nothing (its latest is '?')."""
    path = Path(checkpoints) / SNAPSHOT
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        names = [r["checkpoint_dir_name"] for r in doc.get("checkpoint_results") or []]
        latest = (doc.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, KeyError, TypeError, AttributeError):
        return [], "?"
    return names, latest


def on_disk(checkpoints: Path) -> list[Path]:
    """The step-XXXXXX folders under RUN/checkpoints, oldest first (not .tmp, not damaged/)."""
    return sorted(p for p in Path(checkpoints).glob("step-*") if p.is_dir() and NAME.match(p.name))


def choose_checkpoint(checkpoints: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """(the newest intact checkpoint or None, [(folder name, why it was passed over)] of the newer ones).

    Raises ResumeError when checkpoints exist (on disk or in Ray's snapshot) and none is intact.
    """
    checkpoints = Path(checkpoints)
    rejected: list[tuple[str, str]] = []
    listed = snapshot_names(checkpoints)
    present = {p.name for p in on_disk(checkpoints)}
    for name in sorted(set(listed[0]) - present if listed else ()):
        rejected.append((name, f"Ray Train's run snapshot {checkpoints / SNAPSHOT} lists {name}, "
                               "but the folder is gone"))
    for candidate in reversed(on_disk(checkpoints)):
        problem = check_checkpoint(candidate)
        if problem is None:
            return candidate, rejected
        rejected.append((candidate.name, problem))
    if rejected:
        raise ResumeError(
            f"no checkpoint of {checkpoints.parent} can be resumed from:\n"
            + "\n".join(f"  {name}: {why}" for name, why in rejected)
            + f"\nTo train this run from step 0, move {checkpoints} aside (e.g. `mv {checkpoints} "
            f"{checkpoints}.damaged`); to keep it as it is, train into a new --out (optionally "
            "--init-from an intact export)."
        )
    return None, []


@dataclass
class ResumePlan:
    checkpoint: Path | None                 # what the run resumes from (None: step 0)
    resume_from: str | None = None          # set when Ray's own latest checkpoint is not that one
    rejected: list[tuple[str, str]] = field(default_factory=list)
    moved: list[Path] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [f"checkpoint {name} passed over: {why}" for name, why in self.rejected]
        if self.rejected:
            lines.append(f"resuming from {self.checkpoint.name}, the newest intact checkpoint" if self.checkpoint
                         else "no intact checkpoint is left: training starts at step 0")
        lines += [f"moved {path.parent.name}/{path.name} aside (kept, not deleted)" for path in self.moved]
        return lines


def plan_resume(run_dir: Path) -> ResumePlan:
    """Choose the checkpoint of RUN to resume from (on the driver, before Ray Train starts). When Ray's
    snapshot would hand the workers another one, the damaged folders and the snapshot move to
    RUN/checkpoints/damaged/ and `resume_from` names the chosen folder. Raises ResumeError."""
    checkpoints = Path(run_dir) / "checkpoints"
    chosen, rejected = choose_checkpoint(checkpoints)
    plan = ResumePlan(chosen, rejected=rejected)
    listed = snapshot_names(checkpoints)
    ray_latest = listed[1] if listed else None
    if chosen is None or (chosen.name == ray_latest and not rejected):
        return plan                           # Ray resumes from the chosen one itself (or nothing to resume)
    plan.resume_from = str(chosen)
    damaged = checkpoints / DAMAGED
    for name, _ in rejected:
        if (checkpoints / name).exists():
            plan.moved.append(_move_aside(checkpoints / name, damaged))
    if listed is not None:
        plan.moved.append(_move_aside(checkpoints / SNAPSHOT, damaged))
    return plan


def _move_aside(path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    target, n = into / path.name, 1
    while target.exists():
        target, n = into / f"{path.name}.{n}", n + 1
    shutil.move(str(path), str(target))
    return target
