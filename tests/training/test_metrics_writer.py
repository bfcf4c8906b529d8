"""training.metrics.MetricsWriter: scalars, validation images and hparams land in TensorBoard event files
(read back with TensorBoard's own EventAccumulator)."""

import numpy as np
from PIL import Image

from training.metrics import MetricsWriter, flat_hparams


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_validation_images_scalars_and_hparams_reach_tensorboard(tmp_path):
    sample = tmp_path / "samples" / "step-000004"
    sample.mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(sample / "sheet.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(sample / "real.png")
    writer = MetricsWriter(tmp_path)
    writer.write(4, {"loss": 0.5, "lr": 1e-4})
    writer.images(sample, 4)
    writer.hparams({"optim": {"lr": 1e-4, "betas": [0.9, 0.95]}, "model": {"preset": "lct-debug"}}, {"loss": 0.5, "mfu": None})
    writer.close()

    acc = _accumulator(tmp_path / "tb")
    assert {"validation/generated", "validation/real"} <= set(acc.Tags()["images"])
    (event,) = acc.Images("validation/generated")
    assert event.step == 4 and (event.width, event.height) == (30, 20)
    assert [s.value for s in acc.Scalars("loss")] == [0.5]
    hp = _accumulator(tmp_path / "tb" / "hparams")
    assert "_hparams_/session_start_info" in hp.summary_metadata  # what the HParams tab reads
    assert "hparam/loss" in hp.Tags()["scalars"] and "hparam/mfu" not in hp.Tags()["scalars"]


def test_flat_hparams_are_dotted_and_typed_for_add_hparams():
    assert flat_hparams({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": "x", "g": True}) == {
        "a.b": 1, "a.c": "[1, 2]", "a.d": "null", "a.e": "{}", "f": "x", "g": True}
