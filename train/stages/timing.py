"""Wall time and peak memory per pipeline stage."""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Stages:
    """Wall time and peak resident memory per pipeline stage (logged, and read by bench/)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, doing: str = ""):
        """Time the block; with ``doing``, also say (INFO) when the stage starts and how long it took."""
        start = time.perf_counter()
        if doing:
            log.info("%-9s %s ...", name, doing)
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if doing:
            log.info("%-9s done in %.0fs", name, self.seconds[name])
        # ru_maxrss is in KiB on Linux and is the process peak so far; per stage it is monotone.
        self.peak_mb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def metrics(self) -> dict[str, float]:
        out = {f"stage_seconds_{k}": v for k, v in self.seconds.items()}
        out |= {f"stage_peak_rss_mb_{k}": v for k, v in self.peak_mb.items()}
        out["total_seconds"] = round(sum(self.seconds.values()), 3)
        out["peak_rss_mb"] = max(self.peak_mb.values(), default=0.0)
        return out
