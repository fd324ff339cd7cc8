"""Record in each notebook's metadata which shipped weights its stored outputs were made with.

    .venv/bin/python notebooks/stamp.py notebooks/[0-9][0-9]_*.ipynb

writes metadata["bltlab"]["weights_sha256"] = {"blt.safetensors": ..., "entropy.safetensors": ...}, the
sha256 of the files in bltlab.checkpoint.SHIPPED as they are now. Run it right after
re-executing the notebooks, never instead of it: `make notebooks` does both. tests/test_notebooks.py checks
these digests against the current files, so a retrained checkpoint makes every notebook stale until it is
re-executed and stamped again. The file is written as nbformat writes it (indent 1, sorted keys, UTF-8,
trailing newline), and only when something changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from bltlab.checkpoint import SHIPPED

WEIGHTS = ("blt.safetensors", "entropy.safetensors")


def digests(directory: str | Path = SHIPPED) -> dict[str, str]:
    return {name: hashlib.sha256((Path(directory) / name).read_bytes()).hexdigest() for name in WEIGHTS}


def stamp(path: str | Path, weights: dict[str, str]) -> bool:
    """Write `weights` into the notebook's metadata; True when the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    nb["metadata"].setdefault("bltlab", {})["weights_sha256"] = dict(weights)
    new = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if new == text:
        return False
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(new)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    weights = digests()
    for path in args.notebooks:
        print(f"{path}: {'stamped' if stamp(path, weights) else 'already stamped'}")


if __name__ == "__main__":
    main()
