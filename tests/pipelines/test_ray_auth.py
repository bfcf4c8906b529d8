"""Joining a Ray cluster that has token authentication on (Ray 2.60's default for `ray start --head`):
`lct curate --ray-address` and `lct train --ray-address` exit 2 saying what to set, never a traceback.

A real head node with RAY_AUTH_MODE=token on free ports, in its own temp dir; each command runs in a
subprocess with HOME in a temp dir (so no ~/.ray/auth_token of this machine is found) and Ray's GCS
connect retries cut to 2 (the refusal then comes in seconds, not Ray's ~20)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ray import ray_head

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "5f1c0b7a9e2d4c6b8a0f1e3d5c7b9a1f"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """The GCS address of a one-node Ray with token auth on (tests/_ray.py), its HOME in a temp dir."""
    home = tmp_path_factory.mktemp("head-home")
    with ray_head(num_cpus=1, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "HOME": str(home)},
                  dashboard=False) as address:
        yield address


def run(args: list[str], home: Path, **auth: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env |= {"HOME": str(home), "RAY_NUM_REDIS_GET_RETRIES": "2", "PYTHONPATH": str(ROOT), "COLUMNS": "400"} | auth
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_the_cluster_lets_in_the_right_token(token_cluster, tmp_path):
    ok = run(["-c", f"from dataprep.cluster import connect; import ray; connect({token_cluster!r}); "
                    "print('CPU', ray.cluster_resources()['CPU'])"], tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    assert ok.returncode == 0 and "CPU 1.0" in ok.stdout, said(ok)


def test_curate_without_a_token_exits_2_naming_what_to_set(token_cluster, shared_data, tmp_path):
    result = run(["-m", "pipelines.cli", "curate", str(shared_data / "testvideo.mp4"), "--out", str(tmp_path / "ds"),
                  "--ray-address", token_cluster], tmp_path)
    text = said(result)
    assert result.returncode == 2, text
    assert f"the Ray cluster at {token_cluster} has token authentication on" in text
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN=<token>" in text and "ray get-auth-token" in text
    assert "Traceback" not in text


def test_token_mode_without_a_token_says_where_ray_looks(token_cluster, tmp_path):
    bare = run(["-c", "from dataprep.cluster import RayAuthError, connect\n"
                      f"try:\n    connect({token_cluster!r})\nexcept RayAuthError as e:\n    print('REFUSED', e)"],
               tmp_path, RAY_AUTH_MODE="token")
    text = said(bare)
    assert "REFUSED RAY_AUTH_MODE=token but no token was found" in text, text
    assert "RAY_AUTH_TOKEN=<token>" in text and "RAY_AUTH_TOKEN_PATH" in text and "~/.ray/auth_token" in text


def test_train_with_the_wrong_token_exits_2_saying_it_was_rejected(token_cluster, curated, tmp_path):
    result = run(["-m", "pipelines.cli", "train", "--data", str(curated), "--out", str(tmp_path / "run"),
                  "--preset", "lct-debug", "--ray-address", token_cluster], tmp_path,
                 RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32)
    text = said(result)
    assert result.returncode == 2, text
    assert "rejected the token from RAY_AUTH_TOKEN" in text and "Traceback" not in text
