"""training/resume.py: a damaged checkpoint is never resumed from; the newest intact one is, and said so.

The checkpoints here are built file by file in the layout DeepSpeed + lct write (torch.save zip
archives in ds/, `latest`, ema.safetensors, state.json last, Ray Train's run snapshot); the real
resume from a damaged run is in test_train_ray.py."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from training.resume import SNAPSHOT, ResumeError, check_checkpoint, choose_checkpoint, plan_resume


def write_checkpoint(checkpoints: Path, step: int, world: int = 2) -> Path:
    d = checkpoints / f"step-{step:06d}"
    (d / "ds").mkdir(parents=True)
    torch.save({"module": {"w": torch.randn(64, 64)}}, d / "ds" / "mp_rank_00_model_states.pt")
    for rank in range(world):
        torch.save({"optimizer": {"exp_avg": torch.randn(4096)}}, d / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (d / "latest").write_text("ds")
    save_file({"w": torch.randn(64, 64)}, str(d / "ema.safetensors"))
    (d / "state.json").write_text(json.dumps({"step": step, "world_size": world, "seed": 0,
                                              "data": {str(r): {"epoch": 0, "index": step} for r in range(world)}}))
    return d


def write_snapshot(checkpoints: Path, names: list[str]) -> None:
    """Ray Train's run snapshot: the fields lct reads (checkpoint_dir_name of each result and of the latest)."""
    results = [{"version": 0, "checkpoint_dir_name": n, "metrics": {}} for n in names]
    (checkpoints / SNAPSHOT).write_text(json.dumps({"ray_version": "2.60.0", "checkpoint_results": results,
                                                    "latest_checkpoint_result": results[-1]}))


@pytest.fixture
def run(tmp_path) -> Path:
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (3, 6):
        write_checkpoint(checkpoints, step)
    write_snapshot(checkpoints, ["step-000003", "step-000006"])
    return tmp_path / "run"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_intact_run_resumes_from_ray_s_latest_untouched(run):
    plan = plan_resume(run)
    assert plan.checkpoint.name == "step-000006" and plan.resume_from is None and not plan.rejected
    assert not plan.moved and (run / "checkpoints" / SNAPSHOT).is_file() and plan.describe() == []


@pytest.mark.parametrize("damage, why", [
    (lambda d: truncate(d / "state.json"), "is not valid JSON (truncated?)"),
    (lambda d: (d / "state.json").unlink(), "state.json is missing"),
    (lambda d: (d / "state.json").write_text(json.dumps({"step": 6})), "lacks 'world_size'"),
    (lambda d: flip_a_byte(d / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"), "fails its CRC check"),
    (lambda d: truncate(d / "ds" / "mp_rank_00_model_states.pt"), "not a complete zip archive"),
    (lambda d: (d / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(), "1 ZeRO optimizer partitions"),
    (lambda d: truncate(d / "ema.safetensors"), "ema.safetensors is damaged"),
    (lambda d: (d / "latest").unlink(), "latest is missing"),
], ids=["truncated-state", "no-state", "incomplete-state", "deepspeed-crc", "truncated-deepspeed",
        "missing-partition", "truncated-ema", "no-tag"])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one(run, damage, why):
    checkpoints = run / "checkpoints"
    damage(checkpoints / "step-000006")
    assert check_checkpoint(checkpoints / "step-000003") is None
    assert why in check_checkpoint(checkpoints / "step-000006")
    chosen, rejected = choose_checkpoint(checkpoints)
    assert chosen.name == "step-000003" and [name for name, _ in rejected] == ["step-000006"]
    plan = plan_resume(run)
    # Ray's snapshot would hand the workers step 6: it and the damaged folder move aside, nothing is deleted
    assert plan.resume_from == str(checkpoints / "step-000003")
    assert sorted(p.name for p in (checkpoints / "damaged").iterdir()) == [SNAPSHOT, "step-000006"]
    assert not (checkpoints / "step-000006").exists() and not (checkpoints / SNAPSHOT).exists()
    said = "\n".join(plan.describe())
    assert "step-000006 passed over" in said and why in said and "resuming from step-000003" in said


def test_a_folder_deleted_under_ray_s_snapshot(run):
    """Ray Train itself refuses a snapshot that lists a missing folder; lct resumes from what is there."""
    import shutil

    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "step-000006")
    plan = plan_resume(run)
    assert plan.checkpoint.name == "step-000003" and plan.resume_from == str(checkpoints / "step-000003")
    assert plan.rejected[0][0] == "step-000006" and "the folder is gone" in plan.rejected[0][1]
    assert [p.name for p in plan.moved] == [SNAPSHOT]


def test_no_intact_checkpoint_refuses_with_the_fix(run):
    checkpoints = run / "checkpoints"
    truncate(checkpoints / "step-000006" / "state.json")
    flip_a_byte(checkpoints / "step-000003" / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(ResumeError) as err:
        plan_resume(run)
    said = str(err.value)
    assert "step-000006: " in said and "step-000003: " in said and f"mv {checkpoints}" in said and "--out" in said
    assert (checkpoints / "step-000006").is_dir() and (checkpoints / SNAPSHOT).is_file()   # nothing moved


def test_a_fresh_run_has_nothing_to_resume(tmp_path):
    assert choose_checkpoint(tmp_path / "run" / "checkpoints") == (None, [])
    assert plan_resume(tmp_path / "run").checkpoint is None
