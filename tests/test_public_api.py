"""The public API: every exported name resolves and is documented, and recipes import nothing deeper."""

import ast
import importlib
import subprocess
import sys

import pytest

from .utils import ROOT, run_env

PUBLIC = ("toolkit", "toolkit.data", "toolkit.data.mri", "toolkit.models")  # what a recipe may import from
RECIPES = sorted((ROOT / "recipes").glob("*.py"))


@pytest.mark.parametrize("package", PUBLIC)
def test_every_exported_name_resolves_and_the_docstring_lists_it(package):
    module = importlib.import_module(package)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package} exports names that do not resolve: {missing}"
    undocumented = [name for name in module.__all__ if f"``{name}``" not in module.__doc__]
    assert not undocumented, f"{package}'s docstring does not list {undocumented}"
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


def _toolkit_imports(path):
    """(line, module, names) of every import of toolkit code in ``path`` (names: None for ``import x``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "toolkit":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "toolkit":
                    yield node.lineno, alias.name, None


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_import_only_the_public_api(path):
    bad = []
    for line, module, names in _toolkit_imports(path):
        if module not in PUBLIC:
            bad.append(f"{path.name}:{line} imports {module} (public: {', '.join(PUBLIC)})")
            continue
        exported = importlib.import_module(module).__all__
        bad += [f"{path.name}:{line} imports {name} from {module}, which does not export it"
                for name in names or () if name not in exported]
    assert not bad, "\n".join(bad)


def test_the_recipe_files_exist():
    assert {"cifar10.py", "brain_mri.py", "mnist_autoencoder.py"} <= {p.name for p in RECIPES}


def test_importing_the_packages_loads_no_submodule():
    code = ("import sys, toolkit, toolkit.data, toolkit.data.mri, toolkit.models\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('toolkit.') and m not in "
            f"{PUBLIC!r} and m != 'toolkit.lazy'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
