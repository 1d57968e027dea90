"""The oldest versions CI tests are the floors setup.py declares, and README lists them."""

import re
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def test_ci_tests_the_floors_of_setup_py_and_readme_lists_them():
    ci = (ROOT / ".ci" / "run").read_text()
    oldest_job = ci[ci.index("OLDEST=") :]
    pins = dict(re.findall(r"([\w-]+)==([\d.]+)", oldest_job))
    floors = dict(re.findall(r'"([\w-]+)>=([\d.]+)"', (ROOT / "setup.py").read_text()))
    for name in ("transformers", "diffusers", "huggingface-hub"):
        assert Version(pins[name]) == Version(floors[name]), (
            f"CI tests {name}=={pins[name]}, setup.py allows >={floors[name]}"
        )
    readme = (ROOT / "README.md").read_text()
    assert f"transformers {pins['transformers']} with diffusers {pins['diffusers']}" in readme
    assert f"`transformers>={floors['transformers']}`, `diffusers>={floors['diffusers']}`" in readme
