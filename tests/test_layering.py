"""Packaging and layering: one import root, and imports that flow one way.

ppl (language) <- ppl.transforms <- ppl.estimators <- ppl.backends <- ppl.models <- examples/, bench/.
ppl.backends needs no estimator: it may import ppl and ppl.transforms only.
No file is exempt: the main command is ppl.models.cli (top layer); ppl/__main__.py launches it
by module name when ``python -m ppl`` runs, and ``import ppl`` loads no layer above ppl.
"""
import ast
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = {"ppl": 0, "transforms": 1, "estimators": 2, "backends": 3, "models": 4}
PACKAGE_OF = {"ppl": "ppl", "ppl.transforms": "transforms", "ppl.estimators": "estimators",
              "ppl.backends": "backends", "ppl.models": "models"}


def _layer_of_module(name: str):
    parts = name.split(".")
    if parts[0] != "ppl":
        return None
    sub = ".".join(parts[:2])
    return LAYERS[PACKAGE_OF.get(sub, "ppl")]


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_imports_flow_one_way():
    bad = []
    for folder, layer in LAYERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            for mod in _imports(path):
                target = _layer_of_module(mod)
                if target is not None and target > layer:
                    bad.append(f"{path.relative_to(ROOT)} imports {mod}")
                if folder == "backends" and target == LAYERS["estimators"]:
                    bad.append(f"{path.relative_to(ROOT)} imports {mod} (backends need no estimator)")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_layering_check_catches_a_violation(tmp_path):
    """Negative control: the checker flags an upward import."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    import ppl.models.vae\n")
    assert [m for m in _imports(f) if _layer_of_module(m) == LAYERS["models"]]


def test_import_ppl_loads_no_layer_above_it():
    """The static check above sees imports; this sees what ``import ppl`` really loads."""
    code = ("import sys, ppl; print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[:2] in (['ppl', 'transforms'], ['ppl', 'estimators'], ['ppl', 'backends'], "
            "['ppl', 'models']))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", r.stdout


@pytest.mark.slow
def test_wheel_has_one_import_root(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("ppl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ppl"}, tops
    for sub in ("transforms", "estimators", "backends", "models"):
        assert f"ppl/{sub}/__init__.py" in names


def test_package_dir_mapping_declared():
    text = (ROOT / "pyproject.toml").read_text()
    for sub in ("transforms", "estimators", "backends", "models"):
        assert f'"ppl.{sub}" = "{sub}"' in text
    import ppl.transforms

    assert pathlib.Path(ppl.transforms.__file__).parent == ROOT / "transforms"
