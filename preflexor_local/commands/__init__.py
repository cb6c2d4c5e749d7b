"""One module per CLI command; ``run`` is how any of them is executed (the CLI and the converter scripts)."""

from __future__ import annotations

import os
import sys


def run(command, argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a click command: library errors become one red line plus a hint; ``--debug`` shows the traceback."""
    import click

    from ..errors import PreflexorError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PREFLEXOR_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except PreflexorError as err:
        if debug:
            raise
        click.secho(f"error: {err.message}", fg="red", err=True)
        if err.hint:
            click.echo(f"  hint: {err.hint}", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): nothing left to say
        sys.exit(0)
    except Exception as err:  # a bug: say so in one line unless asked for the traceback
        if debug:
            raise
        click.secho(f"error: unexpected {type(err).__name__}: {err}", fg="red", err=True)
        click.echo("  hint: rerun with --debug for the traceback and report it", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
