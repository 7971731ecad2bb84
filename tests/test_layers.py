"""The project's layers import one way, and no module takes a private name from another package:
entry points -> tools -> engine -> methods -> models / data -> config (with the foundation modules rng, files
and compat beside config)."""
import ast

from helpers import ROOT

# what each layer may import from the project, besides itself
LAYERS = {
    "config": set(),
    "foundation": {"config"},  # allspark/rng.py, files.py, compat.py
    "models": {"config", "foundation"},
    "data": {"config", "foundation"},
    "methods": {"config", "foundation", "models", "data"},
    "engine": {"config", "foundation", "models", "data", "methods"},
    "tools": {"config", "foundation", "models", "data", "methods", "engine"},
    "entry": {"tools"},  # allspark/selfcheck.py, summarize.py: `python -m allspark.selfcheck`, `... summarize`
}
FOUNDATION = {"rng", "files", "compat", "__init__"}
ENTRY = {"selfcheck", "summarize"}


def layer_of(module):
    """'config', 'models', ... for a module path relative to allspark/ (a tuple of parts)."""
    head = module[0]
    if len(module) == 1:
        name = head.removesuffix(".py")
        return "foundation" if name in FOUNDATION else "entry" if name in ENTRY else name
    return head


def imports(path):
    """(imported allspark module parts, imported names) of every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT / "allspark").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("allspark"):
                target = node.module.split(".")[1:]
            else:
                continue
            yield tuple(target), [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("allspark."):
                    yield tuple(alias.name.split(".")[1:]), []


def test_layers_import_downward_only_and_no_private_names_cross_packages():
    wrong = []
    for path in sorted((ROOT / "allspark").rglob("*.py")):
        own = path.relative_to(ROOT / "allspark").parts
        layer = layer_of(own)
        for target, names in imports(path):
            if not target:  # `from .. import x`: the names are modules of the package
                target = (names[0],)
            other = layer_of(target)
            if other != layer and other not in LAYERS[layer]:
                wrong.append(f"{'/'.join(own)} ({layer}) imports {'.'.join(target)} ({other})")
            if other != layer or target[0] != own[0]:
                wrong += [f"{'/'.join(own)} imports the private {n} of {'.'.join(target)}" for n in names
                          if n.startswith("_")]
    assert wrong == []


def test_entry_points_import_the_engine_and_the_tools_only():
    for name in ("train.py", "eval.py", "predict.py"):
        tree = ast.parse((ROOT / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        project = {m for m in modules if m.startswith("allspark")}
        assert project and all(m.split(".")[1] in ("engine", "tools", "config", "methods") for m in project), name
