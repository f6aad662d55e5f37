"""QEMU's error classes and the catalogue of repeated error texts (emulator/qerror.py)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from emulator import qerror
from emulator.error import ErrorClass, QemuError
from emulator.qmp.errors import error_response
from emulator.qmp.qobject import to_json

EMULATOR = Path(__file__).resolve().parent.parent / "emulator"


def test_error_classes_are_qapis() -> None:
    assert [c.value for c in ErrorClass] == ["GenericError", "CommandNotFound", "DeviceNotActive",
                                            "DeviceNotFound", "KVMMissingCap"]
    error = QemuError("Job not found")
    assert error.error_class is ErrorClass.GENERIC_ERROR and error.error_class == "GenericError"
    reply = error_response(QemuError("x", ErrorClass.DEVICE_NOT_ACTIVE))
    assert type(reply["error"]["class"]) is str
    assert to_json(reply) == '{"error": {"class": "DeviceNotActive", "desc": "x"}}'


def _raised_texts() -> Counter[str]:
    """The literal first arguments of every QemuError(...) in the emulator, f-strings as
    templates with %s."""
    texts: Counter[str] = Counter()
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and getattr(
                    node.func, "id", getattr(node.func, "attr", None)) == "QemuError"):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                texts[arg.value] += 1
            elif isinstance(arg, ast.JoinedStr):
                texts["".join(part.value if isinstance(part, ast.Constant) else "%s"
                              for part in arg.values)] += 1
    return texts


def test_repeated_texts_are_named_in_the_catalogue() -> None:
    """A text raised in two places is a constant of emulator/qerror.py (or, if versions differ,
    of versions.ErrorTexts), not two literals that can drift apart."""
    texts = _raised_texts()
    assert len(texts) > 200  # the scan sees the emulator's errors
    assert {text: n for text, n in texts.items() if n > 1} == {}
    catalogue = {value for name, value in vars(qerror).items() if name.isupper()}
    assert [text for text in texts if text in catalogue] == []
