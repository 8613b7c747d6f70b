"""What every benchmark records beside its numbers: the machine, and the result file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    """Cores, platform, Python and the load average (1/5/15 min) now: other work on the machine skews
    timings, so every result says how busy it was."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(path: str | Path, result: dict) -> Path:
    """Write ``result`` (plus the date) as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d")} | result, indent=2, default=str) + "\n")
    return path
