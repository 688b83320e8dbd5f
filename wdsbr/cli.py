"""Running the command-line tools: a user mistake is one line `error: …` on stderr and a non-zero exit, never
a traceback (unless `--debug`), whether click caught it (a missing option, a path that does not exist) or the
tool raised it (a shard folder without shards, a model folder without a tokenizer)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wdsbr import dist

USER_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, ValueError)


def run(command: click.Command) -> None:
    """Call `command` like click's standalone mode, but with one-line errors. Exit codes: click's own (2 for
    usage errors, 1 for others), 2 for errors of the USER_ERRORS kinds raised by the tool."""
    debug = "--debug" in sys.argv

    def say(message: str) -> None:  # under a launcher every rank gets the same error: rank 0 says it
        if dist.is_main():
            click.echo(message, err=True)

    try:
        command.main(standalone_mode=False)
    except click.exceptions.Exit as done:  # --help, or a command that exits on purpose
        sys.exit(done.exit_code)
    except click.ClickException as error:
        if debug:
            raise
        hint = f" (see {Path(sys.argv[0]).name} --help)" if isinstance(error, click.UsageError) else ""
        say(f"error: {error.format_message()}{hint}")
        sys.exit(error.exit_code)
    except click.Abort:
        say("error: aborted")
        sys.exit(1)
    except USER_ERRORS as error:
        if debug:
            raise
        say(f"error: {error}")
        sys.exit(2)
