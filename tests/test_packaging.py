"""The two install routes agree: pyproject.toml (pip: the dependencies plus the `course` extra,
and any other extra that environment.yml mirrors) and environment.yml (conda) name the same
packages with the same minimum versions; CI runs `make test`; the Makefile has the documented
targets. The comparison itself is tested on deliberately broken inputs, so it can fail."""

from __future__ import annotations

import os
import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONDA_TO_PIP = {"pytorch": "torch"}       # conda-forge's name for the same package
IGNORED = {"python", "pip"}


def _min_version(spec) -> str | None:
    lows = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    return lows[0] if lows else None


def pip_requirements(pyproject: dict, mirrored=()) -> dict[str, str | None]:
    """{canonical name: minimum version} over the dependencies and the extras.

    environment.yml is the conda twin of ``pip install -e .[course]``, plus any other extra
    (e.g. ``browser``) that it chooses to mirror: the `course` extra counts in full, another
    extra's package only when its name is in `mirrored` (the names environment.yml lists).
    """
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    lines = list(project.get("dependencies", [])) + list(extras.get("course", []))
    for name, reqs in extras.items():
        if name != "course":
            lines += [r for r in reqs if canonicalize_name(Requirement(r).name) in mirrored]
    out = {}
    for line in lines:
        req = Requirement(line)
        out[canonicalize_name(req.name)] = _min_version(req.specifier)
    return out


def conda_requirements(env: dict) -> dict[str, str | None]:
    """{canonical pip name: minimum version} from environment.yml, pip section included."""
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):                      # the `pip:` subsection: pip syntax
            for line in dep.get("pip", []):
                if line.strip().startswith("-e") or line.strip().startswith("-"):
                    continue                           # `-e .` installs ddlab itself
                req = Requirement(line)
                out[canonicalize_name(req.name)] = _min_version(req.specifier)
            continue
        # conda match specs: "name>=1.2", "name >=1.2", "name=1.2", "name 1.2", "name"
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(?:(>=|==|=|\s)\s*([0-9][^\s,]*))?.*", dep)
        assert m, f"cannot parse conda dependency {dep!r}"
        name = canonicalize_name(CONDA_TO_PIP.get(m.group(1).lower(), m.group(1)))
        if name in IGNORED:
            continue
        out[name] = m.group(3)
    return out


def disagreements(pyproject: dict, env: dict) -> list[str]:
    conda = conda_requirements(env)
    pip = pip_requirements(pyproject, mirrored=set(conda))
    problems = []
    for name in sorted(set(pip) | set(conda)):
        if name not in conda:
            problems.append(f"{name} is in pyproject.toml but not in environment.yml")
        elif name not in pip:
            problems.append(f"{name} is in environment.yml but not in pyproject.toml")
        elif pip[name] != conda[name]:
            problems.append(f"{name}: pyproject.toml wants >= {pip[name]}, "
                            f"environment.yml wants >= {conda[name]}")
    return problems


def _load():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    return pyproject, env


def test_pyproject_and_environment_agree():
    pyproject, env = _load()
    assert "course" in pyproject["project"].get("optional-dependencies", {}), \
        "pyproject.toml has no `course` extra (the Makefile installs .[course])"
    assert pip_requirements(pyproject), "no dependencies found in pyproject.toml"
    assert not disagreements(pyproject, env), "\n".join(disagreements(pyproject, env))


def test_every_dependency_has_a_minimum_version():
    pyproject, _ = _load()
    missing = [name for name, v in pip_requirements(pyproject).items() if v is None]
    assert not missing, f"no minimum version for {missing}"


def test_comparison_catches_mismatches():
    pyproject = {"project": {"dependencies": ["torch>=2.2", "numpy>=1.24"],
                             "optional-dependencies": {"course": ["pytest>=7.4"]}}}
    good = {"dependencies": ["python>=3.10", "pytorch>=2.2", "numpy >=1.24", "pip",
                             {"pip": ["-e .", "pytest>=7.4"]}]}
    assert disagreements(pyproject, good) == []
    missing = {"dependencies": ["pytorch>=2.2", "numpy>=1.24"]}
    assert disagreements(pyproject, missing) == [
        "pytest is in pyproject.toml but not in environment.yml"]
    older = {"dependencies": ["pytorch>=2.1", "numpy>=1.24", "pytest>=7.4"]}
    assert disagreements(pyproject, older) == [
        "torch: pyproject.toml wants >= 2.2, environment.yml wants >= 2.1"]
    extra = {"dependencies": ["pytorch>=2.2", "numpy>=1.24", "pytest>=7.4", "pandas>=2"]}
    assert disagreements(pyproject, extra) == [
        "pandas is in environment.yml but not in pyproject.toml"]
    torch_by_pip_name = {"dependencies": ["torch>=2.2", "numpy>=1.24", "pytest>=7.4"]}
    assert disagreements(pyproject, torch_by_pip_name) == []
    # another extra: optional in environment.yml, but held to the same minimum when mirrored
    pyproject["project"]["optional-dependencies"]["browser"] = ["playwright>=1.40"]
    assert disagreements(pyproject, good) == []
    mirrored = {"dependencies": good["dependencies"][:-1]
                + [{"pip": ["-e .", "pytest>=7.4", "playwright>=1.30"]}]}
    assert disagreements(pyproject, mirrored) == [
        "playwright: pyproject.toml wants >= 1.40, environment.yml wants >= 1.30"]
    assert pip_requirements(pyproject)["pytest"] == "7.4"
    assert "playwright" not in pip_requirements(pyproject)


def test_ci_runs_make_test():
    path = os.path.join(ROOT, ".ci", "run")
    assert os.path.isfile(path), ".ci/run is missing"
    assert os.access(path, os.X_OK), ".ci/run is not executable"
    with open(path) as f:
        code = [line.split("#", 1)[0].strip() for line in f if not line.startswith("#!")]
    assert any(re.fullmatch(r"(exec\s+)?make\s+(.*\s)?test(\s.*)?", line) for line in code), \
        ".ci/run does not call `make test`"


@pytest.mark.parametrize("target", ["lab", "test", "figures"])
def test_makefile_has_target(target):
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    assert re.search(rf"^{target}\s*:", text, re.MULTILINE), f"Makefile has no `{target}` target"
