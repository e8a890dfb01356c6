"""pyproject.toml, environment.yml and requirements/constraints.txt must agree.

pyproject.toml is the source: environment.yml (conda, for a GPU machine) lists the same
packages with the same version floors, and constraints.txt pins (``==``) a version of each
that satisfies them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]


def floors(requirements: list[str]) -> dict[str, SpecifierSet]:
    """name (PEP 503, extras stripped) -> the combined specifiers of every line naming it."""
    found: dict[str, SpecifierSet] = {}
    for line in requirements:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        found[name] = found.get(name, SpecifierSet()) & req.specifier
    return found


def lower_bound(spec: SpecifierSet) -> Version | None:
    bounds = [Version(s.version) for s in spec if s.operator == ">="]
    return max(bounds) if bounds else None


def pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def constraint_pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


# ---------------------------------------------------------------------------- helpers

def test_floors_normalise_names_and_strip_extras():
    found = floors(["jax>=0.10.2", "JAX[cuda12]>=0.10.2", "Typing_Extensions>=4", "ruff"])
    assert set(found) == {"jax", "typing-extensions", "ruff"}
    assert lower_bound(found["jax"]) == Version("0.10.2")
    assert lower_bound(found["ruff"]) is None


def test_constraint_pins_rejects_loose_or_duplicate_pins(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nnumpy==2.4.6\nPyYAML==6.0.3  # trailing\n")
    assert constraint_pins(path) == {"numpy": Version("2.4.6"), "pyyaml": Version("6.0.3")}
    for text in ("numpy>=2.0\n", "numpy==2.4.6\nNumPy==2.4.6\n"):
        path.write_text(text)
        with pytest.raises(AssertionError):
            constraint_pins(path)


# ---------------------------------------------------------------------------- the files

def expected_conda_packages() -> dict[str, SpecifierSet]:
    return floors(PROJECT["dependencies"] + EXTRAS["lab"] + EXTRAS["cuda"] + EXTRAS["test"])


def test_environment_yml_lists_the_pyproject_packages():
    pip = pip_section(ROOT / "environment.yml")
    assert pip.count("-e .") == 1, "environment.yml installs the course package with `-e .`"
    listed = floors([line for line in pip if line != "-e ."])
    expected = expected_conda_packages()
    missing, extra = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert not missing and not extra, (
        f"environment.yml lacks {missing} and has extra {extra} compared with pyproject.toml "
        "(dependencies + lab + cuda + test extras)")


def test_environment_yml_has_the_same_version_floors():
    listed = floors([line for line in pip_section(ROOT / "environment.yml") if line != "-e ."])
    different = {name: (str(listed[name]), str(spec))
                 for name, spec in expected_conda_packages().items()
                 if name in listed and lower_bound(listed[name]) != lower_bound(spec)}
    assert not different, f"floors differ (environment.yml, pyproject.toml): {different}"


def test_environment_yml_python_satisfies_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    version = pythons[0].split("=")[-1]
    assert SpecifierSet(PROJECT["requires-python"]).contains(version + ".0")


def test_constraints_pin_every_package_at_a_version_meeting_its_floor():
    pins = constraint_pins(ROOT / "requirements" / "constraints.txt")
    wanted = floors(PROJECT["dependencies"] + EXTRAS["lab"] + EXTRAS["test"])
    unpinned = sorted(set(wanted) - set(pins))
    assert not unpinned, f"requirements/constraints.txt does not pin {unpinned}"
    too_old = {name: (str(pins[name]), str(spec)) for name, spec in wanted.items()
               if not spec.contains(pins[name], prereleases=True)}
    assert not too_old, f"pinned versions below pyproject's floors: {too_old}"
    assert canonicalize_name(PROJECT["name"]) not in pins  # the course itself is not pinned


def test_jax_and_jaxlib_are_pinned_to_the_same_version():
    pins = constraint_pins(ROOT / "requirements" / "constraints.txt")
    assert pins["jax"] == pins["jaxlib"]
