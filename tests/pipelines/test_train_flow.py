"""The `train` flow under a temporary Prefect server, training on real Ray Train + DeepSpeed."""

import pytest

from tests.pipelines.conftest import flow_run_artifacts

TINY = {
    "data": {"frames": 4, "size": [16, 16], "holdout": 1},
    "model": {"preset": "lct-debug"},
    "engine": {"workers": 2},
    "schedule": {"steps": 4, "checkpoint_every": 4, "sample_steps": 2},
}


@pytest.mark.slow
def test_train_flow_trains_and_publishes_its_report(prefect_server, curated, tmp_path, monkeypatch):
    """Given paths relative to where the flow runs (the Ray Train workers run elsewhere)."""
    import os

    from pipelines.flows.train import summary_key, train

    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    state = train(data=os.path.relpath(curated, tmp_path), out="run", config=TINY, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["step"] == 4 and result["export"] and (run / "loss.png").is_file()
    assert (run / "training.png").is_file() and result["artifact_key"] == summary_key(run)
    summary = flow_run_artifacts(state)[summary_key(run)].data
    assert "| step | 4 |" in summary and "data:image/png;base64," in summary and str(run / "export") in summary
    assert (run / "report.md").is_file() and (run / "config.yaml").is_file()


def test_train_flow_fails_before_training_on_a_bad_dataset(prefect_server, tmp_path):
    from pipelines.flows.train import train

    state = train(data=str(tmp_path / "missing"), out=str(tmp_path / "run"), config=TINY, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="does not exist"):
        state.result()
    assert not (tmp_path / "run" / "checkpoints").exists()
