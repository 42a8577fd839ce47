"""The import direction of DESIGN.md, enforced: consensus <- storage <- node -> web.

consensus/ imports only the standard library (minus clocks, sockets, threads) and
itself; storage/ adds lmdb and msgpack; the pure modules of node/ never import trio.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_STDLIB = {"time", "socket", "threading", "asyncio", "select", "selectors", "subprocess"}
STDLIB = set(sys.stdlib_module_names) - IO_STDLIB

ALLOWED: dict[str, set[str]] = {
    "consensus": STDLIB | {"consensus"},
    "storage": STDLIB | IO_STDLIB | {"consensus", "storage", "lmdb", "msgpack"},
}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module.split(".")[0])
    return found


def violations(package: str, allowed: set[str], root: Path = ROOT) -> list[str]:
    bad = []
    for f in sorted((root / package).rglob("*.py")):
        for mod in imports_of(f):
            if mod not in allowed:
                bad.append(f"{f.relative_to(root)} imports {mod}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(package: str) -> None:
    assert violations(package, ALLOWED[package]) == []


def test_checker_catches_a_planted_import(tmp_path: Path) -> None:
    (tmp_path / "consensus").mkdir()
    (tmp_path / "consensus" / "bad.py").write_text("import time\nfrom trio import sleep\n")
    found = violations("consensus", ALLOWED["consensus"], root=tmp_path)
    assert found == ["consensus/bad.py imports time", "consensus/bad.py imports trio"]


def test_packages_import_from_this_checkout() -> None:
    import consensus
    import node
    import simulations
    import storage
    import web

    for mod in (consensus, storage, node, web, simulations):
        assert mod.__file__ is not None
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), mod.__file__
