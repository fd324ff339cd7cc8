"""environment.yml and pyproject.toml must list the same packages with the same bounds."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_requirements() -> set[str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    return {r.replace(" ", "").lower() for r in reqs}


def conda_pip_section() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    out = set()
    for line in lines[start + 1:]:
        m = re.match(r"^\s{6,}- (\S+)\s*$", line)
        if not m:
            break
        out.add(m.group(1).lower())
    return out


def test_environment_matches_pyproject():
    pip, conda = pip_requirements(), conda_pip_section()
    assert pip, "no requirements found in pyproject.toml"
    assert pip == conda, f"only in pyproject: {sorted(pip - conda)}; only in environment.yml: {sorted(conda - pip)}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make app" in readme
