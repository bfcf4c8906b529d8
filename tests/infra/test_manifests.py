"""infra/ manifests agree with the code and with each other: they parse, name one image, pin the
versions of pyproject.toml / requirements.lock, and run `lct` commands and options that exist."""

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def _load(path: str) -> dict:
    return yaml.safe_load((INFRA / path).read_text())


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, ver = line.partition("==")
            pins[name.strip().lower()] = ver.split(";")[0].strip()
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _images(node) -> list[str]:
    """Every `image:` value in a nested manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _containers(node) -> list[dict]:
    if isinstance(node, dict):
        found = list(node["containers"]) if isinstance(node.get("containers"), list) else []
        return found + [c for k, v in node.items() if k != "containers" for c in _containers(v)]
    if isinstance(node, list):
        return [c for v in node for c in _containers(v)]
    return []


EXPECTED_IMAGE = f"ghcr.io/lct-project/lct:{_project()['version']}"


def test_every_manifest_names_the_same_image_tagged_with_the_package_version():
    found = {
        "ray/cluster.yaml": [_load("ray/cluster.yaml")["docker"]["image"]],
        "k8s/raycluster.yaml": _images(_load("k8s/raycluster.yaml")),
        "k8s/rayjob-train.yaml": _images(_load("k8s/rayjob-train.yaml")),
        "prefect/prefect.yaml": _images(_load("prefect/prefect.yaml")),
    }
    for path, images in found.items():
        assert images and set(images) == {EXPECTED_IMAGE}, (path, images)
    assert f"-t {EXPECTED_IMAGE} " in (INFRA / "docker" / "Dockerfile").read_text()


def test_pinned_versions_match_pyproject_and_the_lock():
    lock, deps = _lock(), _project()["dependencies"]
    ray_version = lock["ray"]
    assert f"ray[default,data,train]=={ray_version}" in deps
    for path in ("k8s/raycluster.yaml",):
        assert _load(path)["spec"]["rayVersion"] == ray_version
    assert _load("k8s/rayjob-train.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    assert _load("prefect/prefect.yaml")["prefect-version"] == lock["prefect"]
    python = re.search(r">=(3\.\d+),<", _project()["requires-python"]).group(1)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python  # this venv is the pinned python
    setup = " ".join(_load("ray/cluster.yaml")["setup_commands"])
    assert f"ray.__version__ == '{ray_version}'" in setup and f"(3, {python.split('.')[1]})" in setup
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"python{python} -m venv" in dockerfile and f"ray.__version__ == '{ray_version}'" in dockerfile


def test_dockerfile_installs_the_lock_and_prebuilds_deepspeed_ops():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    froms = [rest for op, *rest in instructions if op == "FROM"]
    assert len(froms) == 1 and re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-devel-", text)
    import torch

    if torch.version.cuda:  # the base image's CUDA major.minor = the pinned torch wheel's
        assert f"nvidia/cuda:{torch.version.cuda}." in text, torch.version.cuda
    assert "pip install -c requirements.lock -e ." in text
    assert "--no-build-isolation -c requirements.lock deepspeed" in text
    assert re.search(r"DS_BUILD_FUSED_ADAM=1", text) and "DS_BUILD_OPS" in text
    assert "TORCH_EXTENSIONS_DIR=" in text
    for op, *rest in instructions:  # every COPY source exists in the build context (the repo root)
        if op == "COPY":
            *sources, _dest = rest[0].split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_ray_cluster_launcher_config_validates():
    """What `ray up` checks before it touches a cloud: the config against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("ray/cluster.yaml")
    validate_config(prepare_config(config))
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = nodes["gpu-worker"]
    assert gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    assert sum(n.get("max_workers", 0) for n in nodes.values()) <= config["max_workers"]


def _group_gpus(group: dict) -> set[str]:
    return {c["resources"]["limits"].get("nvidia.com/gpu") for c in _containers(group)}


@pytest.mark.parametrize("path", ["k8s/raycluster.yaml", "k8s/rayjob-train.yaml"])
def test_kuberay_manifests_have_gpu_workers_and_autoscaling_bounds(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert 8265 in [p["containerPort"] for c in _containers(head) for p in c.get("ports", [])]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert "gpu" in groups and _group_gpus(groups["gpu"]) not in ({None}, set())
    for c in _containers(groups["gpu"]):  # GPUs are requested and limited alike
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    for c in _containers(spec):  # every pod sees the dataset at the same path
        assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]


def _cli() -> dict[str, set[str]]:
    """Registered `lct` commands -> their option names (what `lct --help` lists)."""
    from pipelines.cli import app

    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():
        commands[name] = {opt for p in command.params for opt in p.opts}
        for sub, subcommand in getattr(command, "commands", {}).items():
            commands[f"{name} {sub}"] = {opt for p in subcommand.params for opt in p.opts}
    return commands


def _check_lct_command(line: str) -> None:
    words = shlex.split(line)
    assert words[0] == "lct", line
    if words[1:] == ["--help"]:
        return
    commands = _cli()
    name = next((c for c in sorted(commands, key=len, reverse=True) if words[1 : 1 + len(c.split())] == c.split()),
                None)
    if name is None and words[1] == "train":
        pytest.skip("`lct train` is not registered yet (the training issue adds it)")
    assert name is not None, f"`{line}` uses a command `lct --help` does not list ({sorted(commands)})"
    used = {w.split("=")[0] for w in words if w.startswith("--")}
    assert used <= commands[name], f"`{line}`: options {sorted(used - commands[name])} not in `lct {name} --help`"


def test_rayjob_entrypoint_is_a_real_lct_command():
    _check_lct_command(_load("k8s/rayjob-train.yaml")["spec"]["entrypoint"])


def test_ray_cluster_setup_and_docs_commands_are_real_lct_commands():
    cluster = _load("ray/cluster.yaml")
    commands = [c for c in cluster["setup_commands"] if c.startswith("lct ")]
    header = (INFRA / "ray" / "cluster.yaml").read_text().split("\ncluster_name")[0]
    commands += [line.split("-- ", 1)[1] for line in header.splitlines() if "ray job submit" in line]
    assert commands
    for command in commands:
        _check_lct_command(command.split(">")[0])


def test_the_ingest_job_entrypoint_is_a_real_lct_command():
    from pipelines.flows.ingest import curate_entrypoint

    _check_lct_command(curate_entrypoint(["s3://films/new/"], "/data/ds"))


def test_prefect_yaml_deployments_match_the_flows_and_lct_flows_serve():
    from pipelines.flows.ingest import effective_config, ingest
    from pipelines.serve import ServeConfig

    from prefect.cli.deploy._models import PrefectYamlModel

    doc = _load("prefect/prefect.yaml")
    model = PrefectYamlModel.model_validate(doc)  # what `prefect deploy` validates the file with
    assert [d.schedules[0].cron for d in model.deployments if d.schedules] == ["0 2 * * *"]
    deployments = {d["entrypoint"]: d for d in doc["deployments"]}
    assert set(deployments) == {"pipelines/flows/ingest.py:ingest", "pipelines/flows/train.py:train",
                                "pipelines/flows/end_to_end.py:end_to_end"}
    nightly = deployments["pipelines/flows/ingest.py:ingest"]
    serve_default = ServeConfig().ingest
    assert (nightly["name"], nightly["schedules"][0]["cron"]) == (serve_default.name, serve_default.cron)
    params = ingest.validate_parameters(nightly["parameters"])  # the form the UI shows accepts them
    cfg = effective_config(params["config"], params["ray_address"], params["max_failure_rate"])
    assert cfg.ray.address is None  # a dashboard URL: curation is submitted as a Ray job
    for entrypoint, d in deployments.items():
        assert d["work_pool"]["job_variables"]["image"] == EXPECTED_IMAGE
        if "train" in entrypoint or "end_to_end" in entrypoint:
            assert d["schedules"] == []  # on demand
        file, name = entrypoint.split(":")
        if (ROOT / file).exists():  # train / end_to_end arrive with the training issue
            from prefect import Flow
            from prefect.flows import load_flow_from_entrypoint

            assert isinstance(load_flow_from_entrypoint(str(ROOT / file) + ":" + name), Flow), entrypoint
