"""The tests' own conventions, checked from their source: a shared fixture has one definition
(tests/conftest.py), and tests reach QMP handlers only through the dispatcher, as clients do
(tests/helpers.py), never by calling a registered handler directly."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_SOURCES = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "conformance" / "cases").glob("*.py")])


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "fixture"


def _fixtures(path: Path) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in tree.body
            if isinstance(node, ast.FunctionDef) and any(_is_fixture(d) for d in node.decorator_list)]


def test_no_fixture_is_defined_twice_with_the_same_body() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TEST_SOURCES:
        for fixture in _fixtures(path):
            body = ast.dump(ast.Module(body=fixture.body, type_ignores=[]))
            seen[f"{fixture.name}: {body}"].append(path.name)
    twice = {key.split(":")[0]: files for key, files in seen.items() if len(files) > 1}
    assert twice == {}, f"define these once, in tests/conftest.py: {twice}"


def _direct_handler_calls(path: Path) -> list[int]:
    """Lines that call `<something>.handler(...)`: a registered QMP handler called directly."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "handler"]


def test_tests_run_commands_through_the_dispatcher() -> None:
    calls = {path.name: lines for path in TEST_SOURCES if (lines := _direct_handler_calls(path))}
    assert calls == {}, f"use helpers.qmp_cmd / DispatchClient instead: {calls}"


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """Both checks find a direct handler call and a fixture, so an empty result means something."""
    sample = tmp_path / "test_sample.py"
    sample.write_text("import pytest\n@pytest.fixture\ndef sockdir():\n    return 1\n"
                      "def test_x(machine):\n    COMMANDS['quit'].handler(machine)\n")
    assert [f.name for f in _fixtures(sample)] == ["sockdir"]
    assert _direct_handler_calls(sample) == [6]
