"""The house in layers: the documented picture matches the contract CI checks, the public API
names what it loads, and no room is too big to take in or shares a name with another."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
MAX_MODULE_LINES = 400


def layers_contract() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [layers] = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(layers["layers"])


def mermaid(layers: list[str]) -> str:
    """The diagram docs/architecture.md shows for ``layers``, top to bottom."""
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    L{n}["{layer}"]' for n, layer in enumerate(layers, start=1)]
    lines.append("    " + " --> ".join(f"L{n}" for n in range(1, len(layers) + 1)))
    lines.append("```")
    return "\n".join(lines)


def test_architecture_diagram_is_the_layers_contract():
    expected = mermaid(layers_contract())
    assert expected in (ROOT / "docs" / "architecture.md").read_text(), (
        f"docs/architecture.md's diagram is not the contract in pyproject.toml; it should read:\n{expected}"
    )


def test_every_room_of_the_contract_is_described():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rooms = [room.strip() for layer in layers_contract() for room in layer.split("|")]
    assert [room for room in rooms if f"`{room.replace('.', '/')}/`" not in doc] == []


def test_public_api_loads_what_it_names():
    """``engine/__init__.py``: the imports type checkers read are the names loaded on first use."""
    import engine

    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text())
    [checking] = [node for node in tree.body if isinstance(node, ast.If)]
    imported = {(node.module, alias.name) for node in checking.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    homes = {(module, name) for module, names in engine._HOMES.items() for name in names}
    assert imported == homes
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_modules_are_short_and_each_name_is_one_room():
    modules = [p for top in ("engine", "workflows") for p in (ROOT / top).rglob("*.py")]
    modules += [ROOT / "worker.py", ROOT / "scheduler.py"]
    too_long = {str(p.relative_to(ROOT)): n for p in modules
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}
    names = [p.name for p in modules if p.name not in ("__init__.py", "__main__.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
