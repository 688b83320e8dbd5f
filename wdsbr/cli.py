"""Running the command-line tools: a user mistake is one line `error: …` on stderr and a non-zero exit, never
a traceback (unless `--debug`), whether click caught it (a missing option, a path that does not exist) or the
tool raised it (a shard folder without shards, a model folder without a tokenizer)."""

from __future__ import annotations

import runpy
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


def grouped_command(sections: dict[str, list[str]]) -> type[click.Command]:
    """A click command class whose `--help` lists the options under topic headings: {title: [option names]}.
    An option in no section is listed under "Other", so none is ever hidden by a missing entry."""

    class GroupedCommand(click.Command):
        def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            records = {"help" if "--help" in param.opts else param.name: param.get_help_record(ctx)  # click names it oddly
                       for param in self.get_params(ctx) if isinstance(param, click.Option)}
            placed = {name for names in sections.values() for name in names}
            groups = {**sections, "Other": [name for name in records if name not in placed]}
            for title, names in groups.items():
                rows = [records[name] for name in names if records.get(name)]
                if rows:
                    with formatter.section(title):
                        formatter.write_dl(rows)

    return GroupedCommand


# ------------------------------------------------------------------------------ console scripts (pyproject.toml)
# `wdsbr-shard`, `wdsbr-train`, `wdsbr-evaluate` run the documented scripts of the checkout this package is
# installed from (`pip install -e .`, what `make setup` does), so they work from any folder and any shell.

def _run_script(relative: str) -> None:
    script = Path(__file__).resolve().parents[1] / relative
    if not script.is_file():
        sys.stderr.write(f"error: {relative} is not beside the installed package: install wdsbr from its checkout "
                         "with `pip install -e .` (make setup does)\n")
        sys.exit(1)
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


def shard_main() -> None:
    _run_script("tools/shard_corpus.py")


def train_main() -> None:
    """One process; for several, `deepspeed --num_gpus N $(which wdsbr-train) …` or `deepspeed launch/train.py …`."""
    _run_script("launch/train.py")


def evaluate_main() -> None:
    _run_script("launch/evaluate.py")
