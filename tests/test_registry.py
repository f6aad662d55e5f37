"""The command and transaction-action tables: a handler whose signature does not match its
command's QAPI arguments is refused when it is registered, not on its first call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulator.commands import COMMANDS, TYPES
from emulator.commands.registry import (
    TRANSACTION_ACTIONS,
    CommandDef,
    check_handler,
    check_handlers,
    qmp_command,
    transaction_action,
)

NAME = "x-blocktxn-test-command"


@pytest.fixture
def no_test_command() -> Iterator[None]:
    """Whatever a test registers under NAME is gone afterwards."""
    yield
    COMMANDS.pop(NAME, None)


def test_every_registered_handler_matches_its_arguments() -> None:
    check_handlers()


@pytest.mark.usefixtures("no_test_command")
def test_a_misspelt_argument_fails_at_registration() -> None:
    def handler(machine: Any, jobid: str) -> None:
        pass

    with pytest.raises(TypeError, match="parameter 'jobid' is not an argument of the command; "
                                        "argument 'job_id' has no parameter"):
        qmp_command(NAME, {"job-id": "str"})(handler)
    assert NAME not in COMMANDS


@pytest.mark.usefixtures("no_test_command")
def test_a_missing_argument_fails_at_registration() -> None:
    def handler(machine: Any, node: str) -> None:
        pass

    with pytest.raises(TypeError, match="argument 'name' has no parameter"):
        qmp_command(NAME, "BlockDirtyBitmap")(handler)  # {node, name}
    assert NAME not in COMMANDS


@pytest.mark.usefixtures("no_test_command")
def test_defaults_must_follow_optionality() -> None:
    def no_default(machine: Any, flat: bool) -> None:
        pass

    def default(machine: Any, device: str = "") -> None:
        pass

    with pytest.raises(TypeError, match="'flat' has no default, but the argument is optional"):
        qmp_command(NAME, {"*flat": "bool"})(no_default)
    with pytest.raises(TypeError, match="'device' has a default, but the argument is mandatory"):
        qmp_command(NAME, {"device": "str"})(default)
    assert NAME not in COMMANDS


def test_kwargs_take_the_members_not_named_and_any_needs_them() -> None:
    def boxed(machine: Any, **options: Any) -> None:
        pass

    def named(machine: Any, driver: str) -> None:
        pass

    check_handler(CommandDef(NAME, boxed, "BlockdevOptions"), TYPES)
    check_handler(CommandDef(NAME, boxed, "any"), TYPES)
    with pytest.raises(TypeError, match="'any' arguments need a \\*\\*kwargs parameter"):
        check_handler(CommandDef(NAME, named, "any"), TYPES)


@pytest.mark.usefixtures("no_test_command")
def test_a_type_registered_later_is_checked_when_all_are_registered() -> None:
    def handler(machine: Any, nodename: str) -> None:
        pass

    qmp_command(NAME, "XBlocktxnTestArgs")(handler)  # not a known type yet: checked later
    types = {**TYPES, "XBlocktxnTestArgs": {"struct": "XBlocktxnTestArgs",
                                            "data": {"node-name": "str"}}}
    with pytest.raises(TypeError, match="parameter 'nodename' is not an argument"):
        check_handlers(types)


def test_every_transaction_action_kind_is_registered_once() -> None:
    kinds = set(TYPES["TransactionActionKind"]["data"])
    assert set(TRANSACTION_ACTIONS) == kinds - {"blockdev-snapshot-internal-sync"}
    assert {kind for kind, action in TRANSACTION_ACTIONS.items() if action.grouped} == {
        "drive-backup", "blockdev-backup"}
    with pytest.raises(ValueError, match="registered twice"):
        transaction_action("abort")(lambda *args: None)
