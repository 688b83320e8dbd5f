"""Running the command-line tools: a user mistake is one line `error: …` on stderr and a non-zero exit, never
a traceback (unless `--debug`), whether click caught it (a missing option, a path that does not exist) or the
tool raised it (a shard folder without shards, a model folder without a tokenizer)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import click

from wdsbr import dist

USER_ERRORS = (OSError, ValueError)  # a missing or unreadable file, a model folder without a tokenizer, a bad value


class Command(click.Command):
    """A click command whose user errors (USER_ERRORS raised by the tool: a shard folder without shards, a model
    folder without a tokenizer) are one `error: …` line and exit code 2 (the traceback only with `--debug`), also
    under click's test runner; with `sections` ({title: [option names]}), `--help` lists the options under
    those headings (an option in none under "Other", so a missing entry never hides one)."""

    sections: dict[str, list[str]] = {}

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            if ctx.params.get("debug") or "--debug" in sys.argv:
                raise
            dist.say(f"error: {error}", err=True)  # every rank has the same error: rank 0 says it
            raise click.exceptions.Exit(2) from None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            return super().format_options(ctx, formatter)
        records = {
            "help" if "--help" in param.opts else param.name: param.get_help_record(ctx)  # click names it oddly
            for param in self.get_params(ctx)
            if isinstance(param, click.Option)
        }
        placed = {name for names in self.sections.values() for name in names}
        for title, names in {**self.sections, "Other": [name for name in records if name not in placed]}.items():
            rows = [records[name] for name in names if records.get(name)]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def command(sections: dict[str, list[str]] | None = None, **context_settings):
    """`@click.command()` for the project's tools: a `Command` (one-line errors; `--help` in `sections`)."""
    cls = type("GroupedCommand", (Command,), {"sections": sections or {}})
    return click.command(cls=cls, context_settings={"max_content_width": 110, **context_settings})


def run(command: click.Command) -> None:
    """Call `command` like click's standalone mode, but with one-line errors. Exit codes: click's own (2 for
    usage errors, 1 for others), 2 for the tool's user errors (`Command`)."""
    try:
        code = command.main(standalone_mode=False)  # click returns Exit's code (--help, a user error) in this mode
    except click.exceptions.Exit as done:  # what older click versions raise instead
        sys.exit(done.exit_code)
    except click.ClickException as error:
        if "--debug" in sys.argv:
            raise
        hint = f" (see {Path(sys.argv[0]).name} --help)" if isinstance(error, click.UsageError) else ""
        dist.say(f"error: {error.format_message()}{hint}", err=True)
        sys.exit(error.exit_code)
    except click.Abort:
        dist.say("error: aborted", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


# ------------------------------------------------------------------------------ console scripts (pyproject.toml)
# `wdsbr-shard`, `wdsbr-train`, `wdsbr-evaluate` run the documented scripts of the checkout this package is
# installed from (`pip install -e .`, what `make setup` does), so they work from any folder and any shell.


def _run_script(relative: str) -> None:
    script = Path(__file__).resolve().parents[1] / relative
    if not script.is_file():
        sys.stderr.write(
            f"error: {relative} is not beside the installed package: install wdsbr from its checkout "
            "with `pip install -e .` (make setup does)\n"
        )
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
