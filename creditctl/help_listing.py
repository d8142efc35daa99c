"""click's Command and Group for creditctl: a group's --help lists its subcommands in the order they were
added, each with its whole first help line (click cuts it to what fits on one line, which hides most
of ours), and shows defaults only where there is one. Every creditctl command and group is made with
these: `@click.command(cls=Command)`, `@click.group(cls=Group)`; a Group's subcommands get them by default.
"""

from __future__ import annotations

from typing import Any

import click

_NO_CUT = 10_000


def _quiet_empty_defaults(params: list[click.Parameter]) -> None:
    """Help shows real defaults (`[default: USD]`), not `[default: ""]` for options that are simply optional."""
    for param in params:
        default = param.default if isinstance(param, click.Option) else 0
        if isinstance(param, click.Option) and param.show_default is None and (
                default is None or default is False or default == "" or default == ()):
            param.show_default = False


class Command(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _quiet_empty_defaults(self.params)

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(_NO_CUT)  # the listing wraps it instead


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too
    # (heading, command names) for --help; a command in no section is listed under "More".
    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            super().format_commands(ctx, formatter)
            return
        listed = [n for _, names in self.sections for n in names]
        groups = [*self.sections, ("More", tuple(n for n in self.list_commands(ctx) if n not in listed))]
        for heading, names in groups:
            rows = [(n, self.commands[n].get_short_help_str()) for n in names
                    if n in self.commands and not self.commands[n].hidden]
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they were added, not alphabetical

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(_NO_CUT)
