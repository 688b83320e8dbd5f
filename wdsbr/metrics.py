"""Run records on rank 0: `metrics.jsonl` (one JSON object per line: training steps, evaluations, a final
summary), TensorBoard events when `tensorboard` is installed, and a tqdm progress bar.

Every row has a `kind` (`train`, `eval`, `summary`) and a wall-clock `time`; other ranks write nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wdsbr import dist


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append rows to OUTPUT/metrics.jsonl (flushed per row, so a crash loses nothing written) and mirror the
    numeric fields to TensorBoard under `kind/name`."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True) -> None:
        self.enabled = dist.is_main()
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8") if self.enabled else None
        self._writer = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._writer = None

    def log(self, kind: str, **row: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **{k: finite_or_none(v) for k, v in row.items()}}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._writer is not None and "step" in row:
            for name, value in row.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and name != "step"
                    and math.isfinite(value)
                ):
                    self._writer.add_scalar(f"{kind}/{name}", value, row["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def progress_bar(total_steps: int, initial_step: int) -> tqdm:
    """Rank 0's bar: steps, loss, samples/s and tqdm's ETA; disabled elsewhere."""
    interactive = sys.stderr.isatty()  # in a log file (Slurm, nohup) redraw every 30 s, not every step
    return tqdm(
        total=total_steps,
        initial=initial_step,
        desc="train",
        unit="step",
        file=sys.stderr,
        disable=not dist.is_main(),
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
    )
