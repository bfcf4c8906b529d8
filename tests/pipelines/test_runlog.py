"""pipelines.runlog: every curate/train/generate/eval/demo run writes OUT/logs/<command>-<time>.log."""

import logging

import pytest
import typer

from pipelines.runlog import logged


def _logs(out):
    return sorted((out / "logs").glob("*.log"))


def test_a_run_log_has_the_command_its_records_and_the_exit_code(tmp_path):
    @logged("curate")
    def command(out):
        logging.getLogger("dataprep.run").info("film 1/1 ok")
        logging.getLogger("dataprep.run").debug("not at INFO")

    command(out=tmp_path / "ds")
    (path,) = _logs(tmp_path / "ds")
    assert path.name.startswith("curate-") and path.name.endswith("Z.log")
    text = path.read_text()
    assert text.startswith("# lct ") and "INFO dataprep.run: film 1/1 ok" in text and "not at INFO" not in text
    assert text.rstrip().endswith("# exit code 0")
    terminal = [h for h in logging.getLogger().handlers if getattr(h, "lct_terminal", False)]
    assert terminal and terminal[0].level == logging.WARNING  # the terminal is not flooded with INFO


def test_a_crash_leaves_its_traceback_and_exit_code_1(tmp_path):
    @logged("train")
    def command(out):
        raise RuntimeError("worker 1 died")

    with pytest.raises(RuntimeError):
        command(out=tmp_path / "run")
    text = _logs(tmp_path / "run")[0].read_text()
    assert "Traceback" in text and "RuntimeError: worker 1 died" in text and "# exit code 1" in text


def test_bad_usage_leaves_no_folder_but_a_failure_after_work_is_logged(tmp_path):
    @logged("generate")
    def refused(out):
        raise typer.Exit(2)

    with pytest.raises(typer.Exit):
        refused(out=tmp_path / "gen")
    assert not (tmp_path / "gen").exists()  # exit 2 before anything ran: nothing written

    @logged("generate")
    def failed(out):
        logging.getLogger("training.generate").warning("decoding shot 2")
        raise typer.Exit(2)

    with pytest.raises(typer.Exit):
        failed(out=tmp_path / "gen2")
    assert "# exit code 2" in _logs(tmp_path / "gen2")[0].read_text()


def test_the_handler_is_removed_after_the_run(tmp_path):
    @logged("eval")
    def command(out):
        pass

    before = list(logging.getLogger().handlers)
    command(out=tmp_path / "e")
    logging.getLogger("x").warning("after the run")
    assert "after the run" not in _logs(tmp_path / "e")[0].read_text()
    assert [h for h in logging.getLogger().handlers if h not in before] == []


@pytest.mark.slow
def test_lct_curate_writes_its_log_under_out(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from dataprep.synthetic import SynthConfig, make_films
    from pipelines.cli import app
    from tests.conftest import FAST_CURATION

    make_films(SynthConfig(n_films=1, seed=3), tmp_path / "films")
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump(FAST_CURATION))
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "films"), "--out", str(out), "--config", str(config),
                                      "--num-cpus", "2"])
    assert result.exit_code == 0, result.output
    (path,) = _logs(out)
    text = path.read_text()
    assert text.startswith("# lct ") and " curate: " in text.splitlines()[0]
    assert f"out={out}" in text.splitlines()[1] and str(tmp_path / "films") in text.splitlines()[1]
    assert "film 1/1 ok" in text and "done in" in text and text.rstrip().endswith("# exit code 0")
