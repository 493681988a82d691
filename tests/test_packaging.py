"""pyproject.toml against the code and the environment: declared minimums, extras, license."""
import ast
import importlib.metadata as md
import os
import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # python >= 3.11; 3.10 has no toml reader built in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    PROJECT = tomllib.load(f)["project"]
REQUIRED = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {k: [Requirement(r) for r in v] for k, v in PROJECT["optional-dependencies"].items()}

# the newest API each dependency's minimum must cover (what the code calls, and since when)
FEATURE_FLOORS = {"optax": "0.2.5",  # optax.tree.norm (train/step.py)
                  "orbax-checkpoint": "0.11.15",  # checkpoint_managers preservation policies
                  "grain": "0.2.7",  # grain.samplers / grain.sharding public modules
                  "jax": "0.5.0"}  # orbax-checkpoint 0.11.15 requires it


def minimum(req):
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert lows, f"{req}: no minimum version"
    return max(lows)


@pytest.mark.parametrize("req", REQUIRED + EXTRAS["tfds"], ids=str)
def test_installed_versions_meet_the_declared_minimums(req):
    installed = Version(md.version(req.name))
    assert installed >= minimum(req), f"{req.name} {installed} is older than {req}"


def test_minimums_cover_the_features_the_code_uses():
    declared = {r.name: minimum(r) for r in REQUIRED}
    for name, floor in FEATURE_FLOORS.items():
        assert declared[name] >= Version(floor), f"{name}: declared {declared[name]}, needs {floor}"
    python_floor = Version(PROJECT["requires-python"].removeprefix(">="))
    assert python_floor >= Version("3.10")  # jax >= 0.5, optax, orbax and grain need it


def _top_level_imports():
    """(module, imported at module level?) for every absolute import under jaxvision/."""
    out = set()
    for root, _, names in os.walk(os.path.join(ROOT, "jaxvision")):
        for n in names:
            if n.endswith(".py"):
                tree = ast.parse(open(os.path.join(root, n)).read())
                top = {id(node) for node in tree.body}
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and not node.level:
                        mods = [node.module]
                    else:
                        continue
                    out |= {(m.split(".")[0], id(node) in top) for m in mods}
    return out


def test_every_import_is_declared_and_extras_are_imported_lazily():
    dists = md.packages_distributions()
    declared = {r.name.lower().replace("_", "-") for r in REQUIRED}
    extras = {r.name.lower().replace("_", "-"): k for k, rs in EXTRAS.items() for r in rs}
    for module, at_top in _top_level_imports():
        if module in sys.stdlib_module_names or module == "jaxvision" or module not in dists:
            continue
        names = {d.lower().replace("_", "-") for d in dists[module]}
        if names & declared:
            continue
        extra = next((extras[n] for n in names if n in extras), None)
        assert extra, f"jaxvision imports {module} ({names}) but pyproject does not declare it"
        assert not at_top, f"{module} is the extra [{extra}]: import it inside the function"
    assert "chex" not in declared or any(m == "chex" for m, _ in _top_level_imports())


def test_license_file_and_py_typed_ship():
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert PROJECT["license"]["text"] == "BSD-3-Clause" and text.startswith("BSD 3-Clause License")
    assert os.path.isfile(os.path.join(ROOT, "jaxvision", "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["jaxvision"]
    assert "py.typed" in data
