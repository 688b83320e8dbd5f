"""metrics.jsonl rows on rank 0."""

import json
import math

from conftest import read_metrics

from wdsbr.metrics import MetricsLog


def test_rows_are_appended_flushed_and_nan_becomes_null(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log("train", step=1, loss=2.5)
    assert read_metrics(tmp_path)[0]["loss"] == 2.5  # readable before close: a crash loses nothing written
    log.log("eval", step=1, wer=math.nan)
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["kind"] for r in rows] == ["train", "eval"]
    assert rows[1]["wer"] is None and "time" in rows[1]


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log("train", step=1, loss=1.0)
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tensorboard_events_are_written_and_read_back(tmp_path):
    """tensorboard is in the test extras (CI installs it), so this always runs: the scalars go to event files
    that TensorBoard's own reader parses; text fields stay in metrics.jsonl only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path)
    assert log._writer is not None, "tensorboard is not installed: pip install -e '.[test]'"
    log.log("train", step=3, loss=1.0, note="text is skipped")
    log.log("eval", step=3, wer=0.25, is_best=True)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/wer", "train/loss"]  # bools and text are not scalars
    (loss,) = events.Scalars("train/loss")
    assert (loss.step, loss.value) == (3, 1.0)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["note"] == "text is skipped"
