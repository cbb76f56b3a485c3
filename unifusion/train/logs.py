"""Training logs: one JSON object per line (`log.jsonl`), optionally mirrored to TensorBoard.

Owns the log file's life cycle: appended to during a run, cut back to the resumed step on `--resume`
(so a resumed run's log reads as if it had never stopped), written only by the main process.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["JsonlLogger"]


class JsonlLogger:
    """Append records to `path` (a `log.jsonl`); `None` disables logging. `tensorboard=True` also writes
    scalars with `torch.utils.tensorboard` when the `tensorboard` package is installed."""

    def __init__(self, path: Path | None, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path) if path is not None else None
        self.tb = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("train.tensorboard=true needs the 'tensorboard' package "
                                 "(pip install 'unifusion[tensorboard]')") from None
            self.tb = SummaryWriter(str(self.path.parent / "tb"))

    def log(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
