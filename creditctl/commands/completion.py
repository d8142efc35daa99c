"""creditctl completion bash|zsh|fish: the shell completion script (click's), to source or install."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from creditctl.help_listing import Command

SHELLS = ("bash", "zsh", "fish")
INSTALL = {"bash": 'eval "$(creditctl completion bash)"   # in ~/.bashrc',
           "zsh": 'eval "$(creditctl completion zsh)"    # in ~/.zshrc',
           "fish": "creditctl completion fish > ~/.config/fish/completions/creditctl.fish"}


@click.command("completion", cls=Command, help="print the shell completion script for bash, zsh or fish",
               epilog="\b\n" + "\n".join(INSTALL.values()))
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def command(ctx: click.Context, shell: str) -> int:
    root = ctx.find_root().command
    completion = get_completion_class(shell)
    assert completion is not None  # every name in SHELLS is one of click's
    click.echo(completion(root, {}, "creditctl", "_CREDITCTL_COMPLETE").source())
    return 0
