"""The data layer stands alone: importing every toolkit.data module loads no config, trainer or objectives."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "toolkit" / "data"
FORBIDDEN = ("toolkit.config", "toolkit.trainer", "toolkit.objectives", "toolkit.objective_base", "toolkit.image_objectives")


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in DATA.rglob("*.py"))


def test_no_data_module_imports_config_trainer_or_objectives():
    bad = []
    for path in DATA.rglob("*.py"):
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                names = [f"{base}.{node.module}" if base and node.module else node.module or base]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, bad


def test_importing_the_data_layer_loads_none_of_them():
    code = ("import importlib, sys\n"
            f"for m in {_modules()!r}:\n    importlib.import_module(m)\n"
            f"print([m for m in sys.modules if m in {FORBIDDEN!r}])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
