"""Check what `python -m build` made: the wheel and the sdist hold what they must.

Usage: python .ci/check_dist.py DIST_DIR   (exits non-zero naming what is wrong)

The wheel: the package with every subpackage of the source tree (setuptools
builds only those pyproject.toml lists) and ``py.typed``, the MIT licence in its
metadata (PEP 639 ``License-Expression`` and the LICENSE file), exactly the three
runtime dependencies, no tests. The sdist: everything its own test suite needs (conftest
files, the NVML double, the end-to-end tests, the typing check, the floor
constraints), the docs the README links to, with the examples and the dashboard
the docs tests run, and mkdocs.yml.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

RUNTIME = {"nvidia-ml-py", "wrapt", "opentelemetry-api"}
ROOT = Path(__file__).resolve().parents[1]
#: The source tree's packages.
PACKAGES = sorted(
    init.relative_to(ROOT).as_posix() for init in (ROOT / "gputime").rglob("__init__.py")
)

SDIST_FILES = (
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    "gputime/py.typed",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/nvml_double.py",
    "tests/nvml/__init__.py",
    "tests/nvml/conftest.py",
    "tests/typing_check.py",
    "tests/celery_worker_app.py",
    "tests/trace_format.py",
    "tests/e2e/__init__.py",
    "tests/e2e/conftest.py",
    "tests/e2e/streaming_app.py",
    "tests/e2e/test_soak.py",
    "docs/compatibility.md",
    "docs/opentelemetry.md",
    "docs/celery.md",
    "docs/examples/starlette_app.py",
    "docs/grafana/gputime-fleet.json",
    "mkdocs.yml",
    "docs/timeline.md",
    "docs/images/demo.png",
    "benchmarks/overhead.py",
    ".ci/install-e2e.sh",
    ".ci/constraints-floor.txt",
)


def check_wheel(path: Path) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        (metadata_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        dist_info = metadata_name.rsplit("/", 1)[0]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    problems.extend(f"wheel: no {init}" for init in PACKAGES if init not in names)
    if "gputime/py.typed" not in names:
        problems.append("wheel: no gputime/py.typed")
    # Packages are listed by hand in pyproject.toml: one left out is missing here.
    if "gputime/integrations/celery.py" not in names:
        problems.append("wheel: no gputime/integrations/celery.py")
    if f"{dist_info}/licenses/LICENSE" not in names:
        problems.append("wheel: no LICENSE under .dist-info/licenses/")
    if metadata["License-Expression"] != "MIT":
        problems.append(f"wheel: License-Expression is {metadata['License-Expression']!r}")
    if metadata.get_all("License-File") != ["LICENSE"]:
        problems.append(f"wheel: License-File is {metadata.get_all('License-File')!r}")
    runtime = {
        requirement.split(">=")[0].strip()
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
    }
    if runtime != RUNTIME:
        problems.append(f"wheel: runtime dependencies are {sorted(runtime)}")
    if any(name.startswith("tests/") for name in names):
        problems.append("wheel: holds tests/")
    return problems


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    return [f"sdist: no {name}" for name in SDIST_FILES if name not in names]


def main(dist: Path) -> int:
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"check_dist: want one wheel and one sdist in {dist}, got {wheels + sdists}")
        return 1
    problems = check_wheel(wheels[0]) + check_sdist(sdists[0])
    for problem in problems:
        print(f"check_dist: {problem}")
    if not problems:
        print(f"check_dist: {wheels[0].name} and {sdists[0].name} hold what they must")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
