"""Copy the training corpus (this interpreter's stdlib .py files, as bltlab.data reads them, and
the two jupyterlab language packs) into DIR, for a machine whose Python differs (the lent GPU):
there, `BLTLAB_STDLIB=DIR/stdlib PYTHONPATH=DIR/site:.` makes bltlab.data read the same documents.

    python benchmarks/pack_corpus.py .corpus
"""
import shutil
import sys
from pathlib import Path

from bltlab import data

dst = Path(sys.argv[1])
for d in data.load_documents("code"):  # the same files, pruned the same way
    p = dst / "stdlib" / d.name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(d.text)
for lang, loc in data.LANG_PACKS.items():
    pkg = data.catalog_dir(lang).parents[2]  # .../jupyterlab_language_pack_<loc>
    shutil.copytree(pkg, dst / "site" / pkg.name, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.mo", "*.po"))
print(f"{dst}: {sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 1e6:.1f} MB")
