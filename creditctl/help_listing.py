"""click's Command and Group for creditctl: a group's --help lists its subcommands in the order they were
added, each with its whole first help line (click cuts it to what fits on one line, which hides most
of ours). Every creditctl command and group is made with these: `@click.command(cls=Command)`,
`@click.group(cls=Group)`; a Group's subcommands get them by default.
"""

from __future__ import annotations

import click

_NO_CUT = 10_000


class Command(click.Command):
    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(_NO_CUT)  # the listing wraps it instead


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they were added, not alphabetical

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(_NO_CUT)
