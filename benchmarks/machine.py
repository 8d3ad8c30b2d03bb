"""What every benchmark run records about where it ran: CPU, cores, versions, commit, date.

Each job keeps its own JSON keys (published results are read by name); these functions are
the one way the values are collected.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    if CPUINFO.exists():
        for line in CPUINFO.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def package_versions(distributions: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution, in the given order; missing ones are left
    out."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The short hash of the checkout's HEAD, ``None`` outside a git checkout."""
    try:
        run = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return run.stdout.strip()


def utc_timestamp() -> str:
    """Now, to the minute: ``"YYYY-MM-DD HH:MM UTC"``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
