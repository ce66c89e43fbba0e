"""The layout of docs/architecture.md, held against the code: the layers import downwards only, every import
inside the package resolves (also those inside functions, which an import of the module does not run), the
package's top level stays small and no module grows past 400 lines."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "emodarts"
# each layer may import itself and the layers after it in this list, never one before it
LAYERS = ["api", "cli", "report", "engine", "model", "ops", "features", "data", "runtime"]
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path):
    """(line, imported module, names) of every `import emodarts...` / `from emodarts... import` in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "emodarts" and node.level == 0:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "emodarts":
                    yield node.lineno, a.name, []


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_layers_import_downwards():
    wrong = []
    for path in MODULES:
        own = _layer(_module_name(path))
        if own not in LAYERS:
            continue
        for line, module, _ in _imports(path):
            other = _layer(module)
            if other in LAYERS and LAYERS.index(other) < LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module} ({other})")
    assert not wrong, "\n".join(wrong)


def test_every_package_import_resolves():
    """`from emodarts.x import y` anywhere in the package, function bodies included, finds y."""
    pytest.importorskip("torch")
    missing = []
    for path in MODULES:
        for line, module, names in _imports(path):
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:
                if "emodarts._C" in str(exc):
                    continue
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module} ({exc})")
                continue
            for name in names:
                if not hasattr(mod, name):
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        missing.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not missing, "\n".join(missing)


def test_top_level_is_small_and_modules_are_short():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_rule_of_the_issue_is_defined_once():
    """The edge rules live in model/space.py; nothing else spells them out again."""
    patterns = {"edge stride": "2 if reduction and", "edge offsets": "offset += n_in",
                "fused to backend": '"fused" if fused else', "grouped CNN flag of the kernel table": "group_cnn"}
    found = []
    for path in MODULES:
        text = path.read_text()
        for rule, pattern in patterns.items():
            if pattern in text and path.name not in ("space.py", "options.py"):
                found.append(f"{path.relative_to(ROOT)}: {rule}")
    assert not found, found
