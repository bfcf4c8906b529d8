"""infra/ manifests agree with the code and with each other: they parse, name one image, pin the
versions of pyproject.toml / requirements.lock, and run `lct` commands and options that exist."""

import json
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


# -- GPUs: every production path trains on CUDA workers, bf16, ZeRO (issue 14 item 11) ----------
def _train_commands() -> dict[str, str]:
    """Every `lct train` command a manifest runs or documents: where -> command line."""
    found = {"k8s/rayjob-train.yaml entrypoint": _load("k8s/rayjob-train.yaml")["spec"]["entrypoint"]}
    header = (INFRA / "ray" / "cluster.yaml").read_text().split("\ncluster_name")[0]
    for line in header.splitlines():
        if "ray job submit" in line and "-- lct train" in line:
            found["ray/cluster.yaml header"] = line.split("-- ", 1)[1]
    return found


def _check_gpu_run(run: Path, zero: int) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ds = json.loads((run / "deepspeed.json").read_text())
    assert cfg["engine"]["gpus_per_worker"] >= 1, cfg["engine"]
    assert cfg["engine"]["precision"] == "bf16" and ds["bf16"]["enabled"] is True, (cfg["engine"], ds["bf16"])
    assert cfg["engine"]["zero_stage"] == ds["zero_optimization"]["stage"] == zero >= 2, cfg["engine"]
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's fused CUDA Adam, not the CPU path


def test_every_manifest_train_command_is_found():
    assert set(_train_commands()) == {"k8s/rayjob-train.yaml entrypoint", "ray/cluster.yaml header"}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["k8s/rayjob-train.yaml entrypoint", "ray/cluster.yaml header"])
def test_manifest_train_command_dry_runs_on_gpus_in_bf16(where, curated, tmp_path):
    """The manifest's own `lct train` line with --dry-run (data/out pointed at a real dataset here)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    words = shlex.split(_train_commands()[where])[1:]
    words[words.index("--data") + 1] = str(curated)
    words[words.index("--out") + 1] = str(tmp_path / "run")
    result = CliRunner().invoke(app, words + ["--dry-run"])
    assert result.exit_code == 0, result.output
    _check_gpu_run(tmp_path / "run", int(words[words.index("--zero") + 1]))


def _documented_train_run() -> dict:
    """The `-p name=value` parameters of the `prefect deployment run 'train/on-demand'` in infra/README.md."""
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "prefect deployment run 'train/on-demand'" in line)
    words = shlex.split(line)
    params = {}
    for flag, value in zip(words, words[1:]):
        if flag == "-p":
            name, _, raw = value.partition("=")
            try:
                params[name] = json.loads(raw)  # what `prefect deployment run -p` does with a value
            except ValueError:
                params[name] = raw
    return params


@pytest.mark.slow
@pytest.mark.parametrize("source", ["prefect/prefect.yaml", "infra/README.md"])
def test_prefect_train_deployment_and_documented_run_train_on_gpus(source, curated, tmp_path):
    from pipelines.flows.train import config_overrides, effective_config, train
    from training.launch import prepare_run

    if source == "prefect/prefect.yaml":
        deployment = next(d for d in _load(source)["deployments"] if d["entrypoint"].endswith("train.py:train"))
        params = dict(deployment["parameters"], data="/data/datasets/films", out="/data/runs/x")
    else:
        params = _documented_train_run()
    params = train.validate_parameters(params)  # the form the UI / `-p` fills must be accepted
    cfg = effective_config(str(curated), None, config_overrides(params))
    prepare_run(cfg, tmp_path / "run")  # what the flow's check-training-config task does
    _check_gpu_run(tmp_path / "run", params["zero_stage"])


def test_flow_parameters_cover_gpus_precision_and_zero():
    import inspect

    from pipelines.flows.train import PARAMETER_KEYS, train

    flow_params = set(inspect.signature(train.fn).parameters)
    assert set(PARAMETER_KEYS) <= flow_params
    assert {PARAMETER_KEYS[k] for k in ("gpus_per_worker", "precision", "zero_stage")} == {
        "engine.gpus_per_worker", "engine.precision", "engine.zero_stage"}


# -- token auth on by default (issue 15 item 4) --------------------------------------------------
TOKEN_SECRET = {"secretKeyRef": {"name": "lct-ray-token", "key": "token"}}


def _all_containers(node) -> list[dict]:
    """Containers at any depth, the RayJob's submitter pod included."""
    return _containers(node)


@pytest.mark.parametrize("path", ["k8s/raycluster.yaml", "k8s/rayjob-train.yaml"])
def test_kuberay_containers_run_with_token_auth_from_the_secret(path):
    doc = _load(path)
    containers = _all_containers(doc)
    if doc["kind"] == "RayJob":
        assert any(c["name"] == "ray-job-submitter" for c in containers), "the job submitter needs the token"
    assert len(containers) >= 3
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (path, c["name"])
        assert env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") == TOKEN_SECRET, (path, c["name"])
    assert "RAY_AUTH_MODE=disabled" not in (INFRA / path).read_text()


def test_ray_cluster_launcher_starts_every_node_with_token_auth():
    config = _load("ray/cluster.yaml")
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token ray start" in command, command
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # Ray's default token path


def test_the_auth_variables_are_the_ones_ray_reads():
    """The names come from the installed Ray, not from memory (a typo would leave auth off)."""
    import inspect

    import ray.exceptions
    from ray._private.authentication import authentication_token_setup

    assert authentication_token_setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert authentication_token_setup._get_default_token_path() == Path.home() / ".ray" / "auth_token"
    assert "`RAY_AUTH_TOKEN` environment variable" in inspect.getsource(ray.exceptions.AuthenticationError)


def _has_token_auth(container: dict) -> bool:
    env = {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}
    return (env.get("RAY_AUTH_MODE", {}).get("value") == "token"
            and "secretKeyRef" in (env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") or {}))


def _ray_without_token_auth(node, where: str = "", in_group: bool = False) -> list[str]:
    """Every place in a parsed manifest that starts Ray or opens its dashboard / Jobs API (8265) without
    token auth: the containers of a KubeRay group (rayStartParams) or of any pod exposing 8265, and any
    command line that runs `ray start` without RAY_AUTH_MODE=token."""
    found = []
    if isinstance(node, dict):
        group = "rayStartParams" in node and "template" in node
        if group:                                       # every container of a KubeRay group runs Ray
            pods = _containers(node["template"])
        elif in_group:
            pods = []
        else:                                           # any other pod that opens the Jobs API port
            pods = [c for c in node.get("containers") or [] if isinstance(c, dict)
                    and 8265 in {p.get("containerPort") for p in c.get("ports") or []}]
        found += [f"{where}: container {c.get('name')!r} has no RAY_AUTH_MODE=token + RAY_AUTH_TOKEN from a Secret"
                  for c in pods if not _has_token_auth(c)]
        found += [f for k, v in node.items() for f in _ray_without_token_auth(v, f"{where}.{k}", in_group or group)]
    elif isinstance(node, list):
        found += [f for i, v in enumerate(node) for f in _ray_without_token_auth(v, f"{where}[{i}]", in_group)]
    elif isinstance(node, str):
        for line in node.splitlines():
            if re.search(r"\bray start\b", line) and "RAY_AUTH_MODE=token" not in line:
                found.append(f"{where}: {line.strip()!r} starts Ray without RAY_AUTH_MODE=token")
            if re.search(r"RAY_AUTH_MODE\s*[=:]\s*disabled", line):
                found.append(f"{where}: {line.strip()!r} turns token auth off")
    return sorted(set(found))


INFRA_YAML = sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", INFRA_YAML)
def test_no_infra_yaml_starts_ray_or_exposes_its_jobs_api_without_token_auth(path):
    """Every YAML under infra/, not only the three manifests named in issue 15 item 4."""
    for doc in yaml.safe_load_all((INFRA / path).read_text()):
        assert _ray_without_token_auth(doc, path) == []


def test_the_token_auth_scan_finds_a_manifest_without_it():
    named = {"k8s/raycluster.yaml", "k8s/rayjob-train.yaml", "ray/cluster.yaml", "prefect/prefect.yaml"}
    assert named <= set(INFRA_YAML)

    def strip(node):                             # the manifests as they were before item 4
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "env"} | (
                {"env": [e for e in node["env"] if not str(e.get("name", "")).startswith("RAY_AUTH")]}
                if isinstance(node.get("env"), list) else {})
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node.replace("RAY_AUTH_MODE=token ", "") if isinstance(node, str) else node

    for path, n in (("k8s/raycluster.yaml", 3), ("k8s/rayjob-train.yaml", 2), ("ray/cluster.yaml", 2)):
        found = _ray_without_token_auth(strip(_load(path)), path)
        assert len(found) == n, (path, found)             # head + worker groups; head + worker `ray start`
    pod = {"containers": [{"name": "dash", "ports": [{"containerPort": 8265}]}]}
    assert _ray_without_token_auth(pod) == [
        ": container 'dash' has no RAY_AUTH_MODE=token + RAY_AUTH_TOKEN from a Secret"]
    assert _ray_without_token_auth({"env": ["RAY_AUTH_MODE=disabled"]}) != []


@pytest.mark.slow
def test_a_head_started_with_the_manifest_env_rejects_jobs_api_calls_without_the_token(tmp_path):
    """`ray start --head` (tests/_ray.py) with the RAY_AUTH_* variables the manifests give (the
    Secret's value here is a fresh random token): the Jobs API answers 401 without it and 200 with it."""
    import secrets
    import urllib.error
    import urllib.request

    from tests._ray import ray_head

    head = next(c for c in _containers(_load("k8s/raycluster.yaml")) if c["name"] == "ray-head")
    env_names = {e["name"]: e.get("value") for e in head["env"]}
    assert "RAY_AUTH_TOKEN" in env_names
    token = secrets.token_hex(16)
    bearer = {"Authorization": f"Bearer {token}"}
    env = {"RAY_AUTH_MODE": env_names["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN": token, "HOME": str(tmp_path)}

    def status(url: str, headers: dict) -> int:
        try:
            return urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/", headers=headers), timeout=5).status
        except urllib.error.HTTPError as err:
            return err.code

    with ray_head(num_cpus=1, env=env, headers=bearer) as url:
        assert status(url, bearer) == 200
        assert status(url, {}) in (401, 403)
        assert status(url, {"Authorization": "Bearer not-the-token"}) in (401, 403)


# -- NCCL across nodes: SP's all-to-all and ZeRO's collectives (issue 13 part 3) ------------------
NCCL_K8S = {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "^lo,docker", "NCCL_IB_HCA": "mlx5", "NCCL_IB_DISABLE": "0",
            "GLOO_SOCKET_IFNAME": "eth0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
NCCL_VMS = {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "^lo,docker", "NCCL_IB_DISABLE": "1",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def _gpu_group(path: str) -> dict:
    doc = _load(path)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")


@pytest.mark.parametrize("path", ["k8s/raycluster.yaml", "k8s/rayjob-train.yaml"])
def test_kuberay_gpu_workers_carry_the_nccl_settings(path):
    containers = _containers(_gpu_group(path))
    assert containers
    for c in containers:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert {k: env.get(k) for k in NCCL_K8S} == NCCL_K8S, (path, c["name"])
    pod = _gpu_group(path)["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")   # NCCL's intra-node buffers live in /dev/shm
    assert shm["emptyDir"]["medium"] == "Memory"
    assert all({"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"] for c in containers)


def test_ray_up_workers_carry_the_nccl_settings():
    docker = _load("ray/cluster.yaml")["docker"]
    env = dict(option.split(None, 1)[1].split("=", 1) for option in docker["worker_run_options"]
               if option.startswith("-e "))
    assert {k: env.get(k) for k in NCCL_VMS} == NCCL_VMS, env
    assert any(o.startswith("--shm-size=") for o in docker["run_options"])


def test_the_nccl_variables_are_ones_the_libraries_read():
    """Each name is in the binary that reads it (a typo would be ignored silently at run time)."""
    import torch

    torch_lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    names = set(NCCL_K8S) | set(NCCL_VMS)
    for name in ("GLOO_SOCKET_IFNAME", "TORCH_NCCL_ASYNC_ERROR_HANDLING"):
        assert name.encode() in torch_lib.read_bytes(), name
    nccl = sorted(Path(torch.__file__).parents[1].glob("nvidia/nccl/lib/libnccl.so*"))
    if not nccl:
        pytest.skip("no libnccl in this environment (CPU-only torch)")
    data = nccl[0].read_bytes()
    for name in sorted(n for n in names if n.startswith("NCCL_")):
        assert name.encode() in data, name


def _documented_sp_commands() -> list[str]:
    """The `lct train` lines of infra/SCALING.md's "Running SP across nodes" section."""
    section = (INFRA / "SCALING.md").read_text().split("## 6. Running SP across nodes", 1)[1].split("\n## ", 1)[0]
    return [line.split("-- ", 1)[1] for line in section.splitlines() if "-- lct train" in line]


def test_the_documented_sp_command_is_a_real_lct_command():
    commands = _documented_sp_commands()
    assert commands and all("--sp " in c for c in commands)
    if "--sp" not in _cli().get("train", set()):
        pytest.skip("`lct train --sp` is not in this tree yet (issue 13 part 1)")
    for command in commands:
        _check_lct_command(command)
