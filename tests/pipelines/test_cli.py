"""The `lct` entry point as a user runs it: a subprocess of the installed console script."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LCT = str(Path(sys.executable).parent / "lct")


def run(*args, **kw):
    return subprocess.run([LCT, *args], capture_output=True, text=True, timeout=300, **kw)


COMMANDS = [[], ["synth"], ["curate"], ["inspect"], ["train"], ["generate"], ["eval"], ["flows"], ["flows", "serve"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_help_lists_every_command():
    listed = run("--help").stdout
    for command in {c[0] for c in COMMANDS if c}:
        assert command in listed, command


def test_bad_config_is_rejected_before_any_work(tmp_path):
    bad = tmp_path / "curate.yaml"
    bad.write_text("shots:\n  treshold: 30\nclips: {width: 255}\n")
    out = tmp_path / "out"
    result = run("curate", str(tmp_path), "--out", str(out), "--config", str(bad))
    assert result.returncode == 2
    assert "treshold" in result.stderr and "even" in result.stderr
    assert not out.exists()


def test_missing_config_file_and_missing_inputs_exit_2(tmp_path):
    result = run("curate", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr
    result = run("curate", str(tmp_path / "no-such-dir"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "matched no film" in result.stderr


def test_inspect_of_a_non_dataset_exits_2(tmp_path):
    result = run("inspect", str(tmp_path))
    assert result.returncode == 2 and "dataset.json" in result.stderr


def test_more_cpus_per_film_than_the_cluster_has_exits_2(tmp_path, shared_data):
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("ray: {film_cpus: 4}\n")
    out = tmp_path / "out"
    result = run("curate", str(shared_data / "counter.mp4"), "--out", str(out), "--config", str(cfg), "--num-cpus", "1",
                 env=dict(os.environ, RAY_ADDRESS=""))
    assert result.returncode == 2, result.stderr
    assert "film_cpus=4" in result.stderr and "only 1.0 CPUs" in result.stderr
    assert not list((out / "shards").glob("*.tar"))


@pytest.mark.slow  # the shared curated dataset + two lct processes
def test_lct_train_into_a_run_another_process_writes_exits_2_with_its_pid(curated, tmp_path):
    """Two real processes: one holds RUN's lock (as a running `lct train` does), `lct train --out RUN` is refused."""
    from tests.dataprep.test_lock import hold

    run_dir = tmp_path / "run"
    holder = hold(run_dir)
    try:
        result = run("train", "--data", str(curated), "--out", str(run_dir), "--preset", "lct-debug", "--steps", "1")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    assert f"pid {holder.pid}" in result.stderr and "another run" in result.stderr
    assert not (run_dir / "checkpoints").exists()  # nothing was started


def test_unlistable_sources_and_unwritable_outputs_exit_2(tmp_path, shared_data):
    """s3:// without s3fs, an http:// host that does not answer, --out that is a file: exit 2, clear message."""
    from tests.dataprep.test_sources import _closed_port

    def flat(text: str) -> str:  # rich wraps long lines
        return " ".join(text.split())

    for url, package in (("s3://bucket/films/", "s3fs"), ("gs://bucket/films/", "gcsfs")):
        result = run("curate", url, "--out", str(tmp_path / "o1"))
        assert result.returncode == 2 and f"pip install {package}" in flat(result.stderr), result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "o1" / "shards").exists()
    result = run("curate", f"http://127.0.0.1:{_closed_port()}/films/a.mp4", "--out", str(tmp_path / "o2"))
    assert result.returncode == 2 and "cannot list http://" in flat(result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "a-file").write_text("x")
    result = run("curate", str(shared_data / "counter.mp4"), "--out", str(tmp_path / "a-file"))
    assert result.returncode == 2 and "is a file, not a folder" in flat(result.stderr), result.stderr
    assert (tmp_path / "a-file").read_text() == "x"
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a read-only filesystem")
def test_an_out_on_a_read_only_filesystem_exits_2(tmp_path, shared_data):
    """Issue 15.10: `lct curate --out` on a read-only mount (a private mount namespace): exit 2, one clear line."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o ro none {mnt} && exec {LCT} curate {shared_data / 'counter.mp4'} "
              f"--out {mnt}/out")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, RAY_ADDRESS=""))
    if "mount" in result.stderr and result.returncode != 2:
        pytest.skip(f"cannot mount a read-only tmpfs here: {result.stderr.strip()}")
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and "read-only filesystem" in text, result
    assert "Traceback" not in result.stderr and "error:" in text


def test_yaml_syntax_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  workers: 2\n zero_stage: [3\n")
    for args in (["train", "--out", str(tmp_path / "run"), "--config", str(bad), "--dry-run"],
                 ["curate", str(tmp_path), "--out", str(tmp_path / "ds"), "--config", str(bad)],
                 ["synth", "--out", str(tmp_path / "films"), "--config", str(bad)]):
        result = run(*args)
        output = result.stdout + result.stderr
        text = " ".join(output.split())
        assert result.returncode == 2, (args, output)
        assert f"{bad.name}:3:" in "".join(output.split()), (args, output)
        assert "YAML syntax error" in text and "Traceback" not in output, (args, output)


def test_a_scene_file_with_a_yaml_syntax_error_names_its_line(tmp_path):
    from training.generate import SceneError, load_scene

    scene = tmp_path / "scene.yaml"
    scene.write_text('global: "a room"\nshots:\n  - prompt: "x\n')
    try:
        load_scene(scene)
    except SceneError as e:
        assert f"{scene}:" in str(e) and "YAML syntax error" in str(e)
    else:
        raise AssertionError("no SceneError")


def test_a_mistyped_mode_blames_the_option_not_the_scene(tmp_path):
    scene = tmp_path / "scene.yaml"
    scene.write_text('global: "a room"\nshots:\n  - prompt: "x"\n')
    result = run("generate", "--checkpoint", str(tmp_path / "no-run"), "--scene", str(scene),
                 "--out", str(tmp_path / "o"), "--mode", "joitn")
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2 and "--mode 'joitn'" in text and "joint" in text, text
    assert "invalid scene" not in text and "cannot load the checkpoint" not in text, text


@pytest.mark.slow
def test_cli_curate_resolves_relative_paths(tmp_path, monkeypatch):
    """`lct curate films --out ds --config c.yaml` with `embed.pretrained: weights/clip.safetensors`, all relative to
    where the user stands, while the Ray workers run in another folder (a Ray started before the cd): the
    weights load in the embedding actor and the dataset records absolute paths."""
    import json

    import open_clip
    import pyarrow.parquet as pq
    import ray
    import torch
    import yaml
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from dataprep.synthetic import SynthConfig, make_films
    from pipelines.cli import app
    from tests.conftest import FAST_CURATION

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    make_films(SynthConfig(n_films=1, seed=5, max_film_seconds=6.0, sizes=[(128, 96)]), tmp_path / "films")
    torch.manual_seed(1)
    (tmp_path / "weights").mkdir()
    save_file(open_clip.create_model(FAST_CURATION["embed"]["model"]).state_dict(), str(tmp_path / "weights" / "clip.safetensors"))
    config = {**FAST_CURATION, "embed": {**FAST_CURATION["embed"], "pretrained": "weights/clip.safetensors"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["curate", "films", "--out", "ds", "--config", "c.yaml"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert summary["embed"]["random_init"] is False
    assert summary["config"]["embed"]["pretrained"] == str(tmp_path / "weights" / "clip.safetensors")
    films = pq.read_table(tmp_path / "ds" / "manifest" / "films.parquet").to_pylist()
    assert [f["status"] for f in films] == ["ok"] and films[0]["uri"].startswith(str(tmp_path / "films"))
