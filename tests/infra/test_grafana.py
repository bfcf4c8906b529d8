"""infra/grafana/lct.json: a Grafana dashboard of lct's custom Ray metrics that matches the code.

Every panel's PromQL names only metrics that dataprep/ or training/ define (with the names Ray's
Prometheus export gives them: ray_<name>, counters + _total), groups only by tags they define,
and every lct metric the code defines is on some panel. Then (slow) the training gauges really
reach Ray's Prometheus endpoint under the names the dashboard queries.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "lct.json"
RAY_LABELS = {"SessionName", "instance", "NodeAddress", "job", "Component", "WorkerId"}


def _defined_metrics() -> dict[str, set[str]]:
    """Prometheus name -> tag keys of every ray.util.metrics metric in dataprep/ and training/."""
    found = {}
    for path in [*ROOT.joinpath("dataprep").glob("*.py"), *ROOT.joinpath("training").glob("*.py")]:
        text = path.read_text()
        for kind, name, rest in re.findall(r"metrics\.(Counter|Gauge|Histogram)\(\s*\"(lct_\w+)\"([^)]*)\)", text):
            tags = set(re.findall(r"\"(\w+)\"", rest.split("tag_keys", 1)[1])) if "tag_keys" in rest else set()
            suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}[kind]
            for suffix in suffixes:
                found[f"ray_{name}{suffix}"] = tags
    from training.metrics import RAY_GAUGES  # built in a loop, not a literal call

    for name, _ in RAY_GAUGES.values():
        found[f"ray_{name}"] = {"run"}
    return found


def _targets(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "stat") and panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${" + var["name"] + "}"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0  # Grafana's 24-column grid
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]}
    assert len(cells) == len(dashboard["panels"])  # no two panels on top of each other


def test_every_expression_names_metrics_and_tags_the_code_defines():
    defined = _defined_metrics()
    assert {"ray_lct_curate_films_total", "ray_lct_curate_shots_total", "ray_lct_curate_frames_decoded_per_s"} <= set(defined)
    used = set()
    for expr in _targets(json.loads(DASHBOARD.read_text())):
        names = set(re.findall(r"\bray_\w+", expr))
        assert names, f"{expr!r} names no metric"
        assert names <= set(defined), f"{expr!r}: {sorted(names - set(defined))} are not defined in the code"
        used |= names
        tags = set().union(*(defined[n] for n in names)) | RAY_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr) + re.findall(r"\{\{(\w+)\}\}", expr):
            for label in re.split(r"\s*,\s*", group.strip()):
                assert label in tags, f"{expr!r} groups by {label!r}, not a tag of {sorted(names)}"
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in defined}
    assert bases <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}, "a metric without a panel"


@pytest.mark.slow
def test_training_gauges_reach_rays_prometheus_endpoint_under_the_dashboards_names(tmp_path):
    import time
    import urllib.request

    import ray

    from training.metrics import MetricsWriter

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        run = tmp_path / "run-gauges"
        run.mkdir()
        writer = MetricsWriter(run)
        writer.write(7, {"loss": 0.25, "samples_per_s": 3.5, "data_wait": 0.1, "mfu": None})
        writer.close()
        port = ray.nodes()[0]["MetricsExportPort"]
        wanted = {"ray_lct_train_step": 7.0, "ray_lct_train_loss": 0.25, "ray_lct_train_samples_per_s": 3.5,
                  "ray_lct_train_data_wait": 0.1}
        found, deadline = {}, time.monotonic() + 120  # the export runs every ~10 s
        while time.monotonic() < deadline and found != wanted:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for line in body.splitlines():
                name = line.split("{", 1)[0]
                if name in wanted and 'run="run-gauges"' in line:
                    found[name] = float(line.rsplit(" ", 1)[1])
            time.sleep(2)
        assert found == wanted
        queried = {n for e in _targets(json.loads(DASHBOARD.read_text())) for n in re.findall(r"\bray_\w+", e)}
        assert set(wanted) <= queried
    finally:
        if started:
            ray.shutdown()
