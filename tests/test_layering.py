"""The package's import graph: acyclic, and lower layers never import higher ones (docs/model.md,
"Layers"). Every import counts, at the top of a file or inside a function, and so does
`importlib.import_module` (the kernel modules that bltlab.kernels loads on first use); imports
under `if TYPE_CHECKING:` (annotations only, never run) do not."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bltlab"

# docs/model.md, "Layers": a module may import its own layer and the ones before it
LAYERS = [
    ["", "tokens", "config"],  # "": the package's __init__ (its version only)
    ["positions", "hashing", "patching", "data"],
    ["kernels"],  # the ops' dispatch, the PyTorch references and the Triton kernels
    ["layers"],
    ["entropy"],
    ["model"],
    ["checkpoint", "cost", "interop", "graphs"],
    ["decode"],
    ["bench", "bench_kernels", "diagnose", "speed", "evaluate", "train", "results", "linked", "lab"],
    ["app"],  # the Gradio workbench (no command line of its own)
    ["cli", "__main__"],  # the command line, whose `app` command starts the workbench
]


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules that module `name` imports."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
              for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & known.keys()
            out |= subs or {target}  # `from . import x` imports module x when there is one
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            out |= {m for m in known if m.startswith(package + ".") and m.count(".") == package.count(".") + 1}
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, f, known) for m, f in known.items()}


def layer_of(module: str) -> int:
    top = (module.split(".") + [""])[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer():
    assert all(layer_of(m) >= 0 for m in graph())


def test_lower_layers_never_import_higher_ones():
    bad = [(m, t) for m, targets in graph().items() for t in targets if layer_of(t) > layer_of(m)]
    assert not bad, bad


def test_the_import_graph_is_acyclic():
    g, done, path = graph(), set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for t in sorted(g[m]):
            visit(t)
        path.pop()
        done.add(m)

    for m in sorted(g):
        visit(m)


def test_the_graph_sees_every_kind_of_import():
    """What the test relies on: a function-level import, importlib's kernel modules, and no edge
    from an annotation-only import."""
    g = graph()
    assert "bltlab.kernels.step" in g["bltlab.kernels"]  # importlib, on first use
    assert "bltlab.decode" in g["bltlab.cli"]  # inside cmd_generate
    assert "bltlab.model" not in g["bltlab.decode.common"]  # under TYPE_CHECKING
    assert "bltlab.app" in g["bltlab.cli"]  # inside cmd_app, so that other commands never import gradio
