"""This code's version: the installed distribution's and, from a git checkout, its commit. A run's
summary and its report both record `code_version()`, so a result can be traced to the code that
made it."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "scoring-cluster"  # pyproject's [project] name

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"


def git_commit(directory: Path) -> str | None:
    """`git rev-parse --short HEAD` in `directory`; None when git or the repository is not there."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def code_version() -> dict[str, str | None]:
    """This process's code: {"package": version, "git": short commit or None}."""
    return {"package": __version__, "git": git_commit(Path(__file__).resolve().parents[1])}
