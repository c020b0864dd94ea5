"""The admin op table is what the CLI and `AdminClient` offer: checked against each other."""

from __future__ import annotations

import argparse

from flrunner.admin.cli import build_parser
from flrunner.admin.client import AdminClient
from flrunner.protocol import admin_ops


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_admin_command_is_a_cli_subcommand_and_a_client_method():
    commands = subcommands()
    for op, command in admin_ops.COMMANDS.items():
        assert op in admin_ops.FROM_ADMIN
        assert op.name in commands, f"admin op '{op.name}' has no 'flrunner {op.name}'"
        assert callable(getattr(AdminClient, op.name, None)), f"AdminClient has no method '{op.name}'"
        options = {o for a in commands[op.name]._actions for o in a.option_strings} | \
            {a.dest for a in commands[op.name]._actions if not a.option_strings}
        assert "--json" in options, f"'flrunner {op.name}' has no --json"
        for name in command.positional:
            assert name in options, f"'flrunner {op.name}' has no argument {name}"


def test_admin_ops_that_are_not_commands_serve_the_clients_own_machinery():
    internal = {op.name for op in admin_ops.FROM_ADMIN if op not in admin_ops.COMMANDS}
    assert internal == {"subscribe", "unsubscribe", "ping", "shutdown"}
