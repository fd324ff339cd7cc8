"""environment.yml and pyproject.toml must list the same packages with the same bounds."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def normal(req: str) -> str:
    """A requirement without spaces, one kind of quote, lower case: `triton>=3.0;sys_platform=="linux"`."""
    return req.replace(" ", "").replace("'", '"').lower()


def pip_requirements() -> set[str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    return {normal(r) for r in reqs}


def conda_pip_section() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    out = set()
    for line in lines[start + 1:]:
        m = re.match(r"^\s{6,}- (\S.*?)\s*(#.*)?$", line)  # an entry may carry a marker, with spaces
        if not m:
            break
        out.add(normal(m.group(1)))
    return out


def test_environment_matches_pyproject():
    pip, conda = pip_requirements(), conda_pip_section()
    assert pip, "no requirements found in pyproject.toml"
    assert pip == conda, f"only in pyproject: {sorted(pip - conda)}; only in environment.yml: {sorted(conda - pip)}"


def test_triton_is_required_on_linux_only():
    """Triton has Linux wheels only: anywhere else an unconditional requirement fails the install."""
    for reqs in (pip_requirements(), conda_pip_section()):
        triton = [r for r in reqs if re.match(r"triton\b", r)]
        assert triton == ['triton>=3.0;sys_platform=="linux"'], triton


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make app" in readme
