"""Running a Python file as a user would: a fresh interpreter, outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Seconds any one script may take.
TIMEOUT_S = 60


def run_python(
    path: Path, workdir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``path`` in ``workdir`` (made if missing), its output captured.

    The environment is this one without ``OTEL_*`` and ``GPUTIME_*`` settings
    (a developer's own must not change what a script shows), plus ``env``;
    ``workdir`` is not the repository, so the script imports gputime as installed.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GPUTIME_"))}
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    clean.update(env or {})
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
