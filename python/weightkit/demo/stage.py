"""What every demo stage returns, and the runner that keeps one stage's failure from hiding the rest."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Table:
    """A result table: ``rows`` are lists of cells matching ``columns``."""

    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""


@dataclass
class StageResult:
    """One stage's outcome. ``status`` is ``"ok"``, ``"failed"`` (``error`` says why) or
    ``"skipped"`` (``error`` says what to install or enable). ``numbers`` holds the raw values
    the tables were made from, for results.json."""

    name: str
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class StageSkipped(Exception):
    """Raised by a stage that cannot run here (a missing optional package); the message says how to enable it."""


def run_stage(name: str, fn: Callable[[StageResult], None]) -> StageResult:
    """Run ``fn(result)``, which fills ``result``; exceptions become a failed (or skipped) stage."""
    result = StageResult(name)
    t0 = time.perf_counter()
    try:
        fn(result)
    except StageSkipped as e:
        result.status, result.error = "skipped", str(e)
    except Exception as e:  # noqa: BLE001  (a demo stage's failure is reported, not raised)
        result.status = "failed"
        result.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    result.seconds = round(time.perf_counter() - t0, 1)
    return result
