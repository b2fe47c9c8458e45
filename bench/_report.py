"""Shared output of the benchmark scripts: a markdown table on stdout and a JSON result file."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine_info", "markdown_table", "write_result"]

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=RESULTS.parent, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def show_progress() -> None:
    """Print llvq's progress lines (the ``llvq`` logger: blocks, tuning steps) on stderr.

    ``train.py`` configures logging through Hydra; a bench script does not, so without this a
    long quantization or tuning run prints nothing until its row ends.
    """
    log = logging.getLogger("llvq")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _cpu_name() -> str | None:
    """The CPU's model name (Linux), or ``None``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, thread count, library versions, the commit and the date."""
    return {
        "commit": _commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_name(),
        # the kernels torch picks (AVX2, AVX512, ...): training runs that differ only here can
        # diverge, since float rounding differs
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Render ``rows`` (dicts) as a markdown table with the given column order."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine info added; return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2) + "\n")
    return path
