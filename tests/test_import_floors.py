"""Imports point down (DESIGN.md's floors): read every module's imports with ``ast`` and refuse
an arrow to a floor above, to a sibling room on the same floor, or from one model family to
another. The package face (``import jaxvision``) may be used from anywhere."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxvision"

# bottom up; the rooms of one floor import none of each other
FLOORS = (
    ("errors", "host_memory"),  # host_memory: malloc settings for the commands, no imports
    ("registry", "layers", "ops"),
    ("necks",),
    ("heads",),  # a head may hold a neck (DeepLab's head holds ASPP)
    ("models", "convert", "data"),
    ("build",),  # a model from its name, weights mapped onto its variables
    ("tasks",),
    ("train",),
    ("place",),  # weights into a sub-tree of a user's variables, through build's mapping
    ("api", "nnx"),  # the package face's functions; nnx: the NNX adapter, on demand only
    ("bench",),
    ("cli",),
)
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}
# the dense models stand on backbones by name; the private helpers serve every family
COMPOSITIONS = {"compose", "segmentation", "segmentation_vgg", "detection"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: pathlib.Path):
    """(line, dotted target) of each jaxvision import in ``path``; ``from jaxvision import X``
    names the submodule X where X is one."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == "jaxvision" or target.startswith("jaxvision."):
                yield node.lineno, target


def _is_module(dotted: str) -> bool:
    p = PACKAGE.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def room(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package face


def family(dotted: str) -> str | None:
    """The model family a ``jaxvision.models`` module belongs to (None: a shared helper)."""
    parts = dotted.split(".")
    if len(parts) < 3 or parts[1] != "models" or parts[2].startswith("_"):
        return None
    return parts[2]


def wrong_arrows(path: pathlib.Path) -> list[str]:
    src = module_name(path)
    here = room(src)
    if here is None:
        return []
    if here not in FLOOR:
        return [f"{src}: room {here!r} has no floor in tests/test_import_floors.py FLOORS"]
    bad = []
    for line, target in sorted(set(imported(path))):
        there = room(target)
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        if there is None or there == here:
            mine, theirs = family(src), family(target)
            if mine and theirs and mine != theirs and mine not in COMPOSITIONS:
                bad.append(f"{where}: one model family importing another")
            continue
        if there not in FLOOR:
            bad.append(f"{where}: room {there!r} has no floor")
        elif FLOOR[there] > FLOOR[here]:
            bad.append(f"{where}: {there}/ is a floor above {here}/")
        elif FLOOR[there] == FLOOR[here]:
            bad.append(f"{where}: {there}/ is a sibling of {here}/ on its floor")
    return bad


def test_every_room_has_a_floor():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert rooms == set(FLOOR), f"rooms without a floor: {sorted(rooms - set(FLOOR))}; " \
                                f"floors without a room: {sorted(set(FLOOR) - rooms)}"


def test_imports_point_down():
    bad = [msg for path in sorted(PACKAGE.rglob("*.py")) for msg in wrong_arrows(path)]
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, target, ok", [
    ("models/resnet.py", "from jaxvision.layers import Conv2d", True),
    ("models/resnet.py", "from jaxvision.models._stages import StageLayout", True),
    ("models/resnet.py", "from jaxvision.models.vgg import CFGS", False),
    ("models/segmentation.py", "from jaxvision.models.resnet import ResNet", True),
    ("models/vit.py", "from jaxvision.convert.merge import ConversionError", False),
    ("layers/conv.py", "from jaxvision.necks import fpn", False),
    ("tasks/base.py", "from jaxvision.train import freeze", False),
    ("tasks/base.py", "import jaxvision as jv", True),
    ("heads/segmentation.py", "from jaxvision.necks.aspp import ASPP", True),
    ("data/loader.py", "from ..models import resnet", False),
    ("train/loop.py", "from jaxvision import ops", True),
    ("train/export.py", "from jaxvision.api import torch_state_dict", False),
])
def test_the_rule_itself(tmp_path, monkeypatch, source, target, ok):
    """The checker refuses what it should, on made-up modules in a copy of the layout."""
    fake = tmp_path / "jaxvision"
    for rel in ("__init__.py", source, "ops/__init__.py", "models/__init__.py",
                "models/vgg.py", "models/resnet.py", "models/_stages.py", "necks/aspp.py",
                "necks/fpn.py", "train/freeze.py", "convert/merge.py", "api.py"):
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).touch()
    (fake / source).write_text(target + "\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert (wrong_arrows(fake / source) == []) == ok
