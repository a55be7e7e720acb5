"""Demo stage: edit (wired up when its capability lands)."""

from weightkit.demo.stage import StageResult, StageSkipped


def run(result: StageResult, **_) -> None:
    raise StageSkipped("not built yet")
