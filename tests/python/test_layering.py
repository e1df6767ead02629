"""The package's import layering (docs/ARCHITECTURE.md, contracts in pyproject.toml): import-linter, run here
on the source tree, checks the layers and that no import cycle exists (imports inside functions count). It
reads `from . import _core` (the compiled module, which it cannot see) as an import of the package itself and
the contracts ignore those edges, so this also checks that no module imports the package `postsvd` for
anything else."""
import ast
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "python", "postsvd")


#: Modules of the package that are not Python source: the compiled core and the build's generated settings.
NOT_SOURCE = ("_core", "_build_config")


def submodules():
    """The names of the package's own modules and subpackages."""
    return {name[:-3] if name.endswith(".py") else name for name in os.listdir(SOURCE)
            if name.endswith(".py") or os.path.isfile(os.path.join(SOURCE, name, "__init__.py"))} | set(NOT_SOURCE)


def imports_of_the_package(text, module, modules=frozenset(NOT_SOURCE)):
    """The imports in `text` (the source of the module named `module`, e.g. 'postsvd.reports') that reach the
    package `postsvd` itself (its __init__: `import postsvd`, `from postsvd import svd`) rather than one of its
    `modules` (`from . import plots`)."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "postsvd"]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                target = (node.module or "").split(".")
            else:
                target = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            if target == ["postsvd"]:
                found += [f"from {'.' * node.level or 'postsvd'} import {a.name}" for a in node.names
                          if a.name not in modules]
    return found


def test_no_module_imports_the_package_itself():
    offenders = {}
    for folder, _, files in os.walk(SOURCE):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or name in ("__init__.py", "__main__.py") and folder == SOURCE:
                continue
            module = os.path.relpath(path[:-3], os.path.dirname(SOURCE)).replace(os.sep, ".")
            found = imports_of_the_package(open(path, encoding="utf-8").read(), module, submodules())
            if found:
                offenders[module] = found
    assert offenders == {}


def test_the_check_tells_an_import_of_the_package_from_one_of_a_module():
    cases = {"import postsvd": 1, "from . import compare_all": 1, "from postsvd import svd": 1,
             "def f():\n    import postsvd\n": 1, "from .. import Comparison": 1, "from . import _core": 0,
             "from . import plots": 0, "from .. import compare": 0, "from .compare import compare": 0,
             "from postsvd.compare import compare": 0, "import numpy": 0}
    for text, expected in cases.items():
        module = "postsvd.functional.cka" if ".." in text else "postsvd.reports"
        assert len(imports_of_the_package(text, module, submodules())) == expected, text


def test_import_linter_contracts_hold():
    assert shutil.which("lint-imports"), "import-linter is not installed (requirements.txt installs it)"
    environment = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    result = subprocess.run(["lint-imports", "--config", os.path.join(ROOT, "pyproject.toml")], cwd=ROOT,
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout
