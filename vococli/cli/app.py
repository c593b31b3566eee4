"""The `vococli` command line: the commands registered on one Typer app, and the mapping of
errors to exit codes.

Exit codes: 0 ok, 1 user error (bad file, bad flag), 2 internal error.
"""

from __future__ import annotations

import os
import sys

import typer

from vococli.cli.answering import ask, chat
from vococli.cli.bench import bench_command
from vococli.cli.common import err
from vococli.cli.cluster import compress_many
from vococli.cli.compress import compress, info
from vococli.cli.eval import eval_command, score_command
from vococli.cli.serve import serve
from vococli.cli.experiment import experiment_needle, experiment_table1
from vococli.cli.training import synth, tiny_model, train
from vococli.errors import UserError

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings=HELP_OPTIONS, help="Answer questions about long videos from compact VoCo caches.")


def _version(value: bool) -> None:
    if value:
        from vococli import __version__

        typer.echo(f"vococli {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", "-V", metavar="", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
    """Answer questions about long videos from compact VoCo caches."""


# each command lives in the module of its concern; registered here, in --help order
app.command()(compress)
app.command("compress-many")(compress_many)
app.command()(ask)
app.command()(chat)
app.command()(info)
app.command("eval")(eval_command)
app.command("score")(score_command)
app.command("bench")(bench_command)
app.command()(serve)
app.command()(synth)
app.command()(train)
experiment_app = typer.Typer(help="Reproducible experiments on synthetic data.", no_args_is_help=True,
                             context_settings=HELP_OPTIONS)
experiment_app.command("table1")(experiment_table1)
experiment_app.command("needle")(experiment_needle)
app.add_typer(experiment_app, name="experiment")
app.command("tiny-model")(tiny_model)


def build_command():
    """The click command of the app, with vococli's help conventions applied."""
    command = typer.main.get_command(app)
    _help_conventions(command)
    return command


def main() -> None:
    """Entry point: map user errors to exit code 1 and one line, crashes to exit code 2."""
    interrupted = interrupted_message(sys.argv[1:2])
    try:
        rc = build_command()(standalone_mode=False)
        if rc == 130:  # click turns Ctrl-C into this return code when not standalone
            err.print(interrupted)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.TyperException as e:  # bad flag, missing argument (click's usage errors)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message.strip():  # no command at all: the help was printed
            err.print(f"error: {message} (see --help)", markup=False)
        sys.exit(1 if message.strip() else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print(interrupted)
        sys.exit(130)
    except UserError as e:
        err.print(f"error: {e.for_command_line()}", markup=False)
        sys.exit(1)
    except OSError as e:  # unwritable output, full disk, permissions: the user's environment
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"error: {where}{e.strerror or e}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print(interrupted)
        sys.exit(130)
    except Exception as e:  # a bug: say so in one line; VOCOCLI_DEBUG=1 shows the traceback
        if os.environ.get("VOCOCLI_DEBUG"):
            raise
        reason = _compile_failure(e)
        if reason:
            err.print(f"error: torch.compile cannot build its kernels on this machine ({reason}); "
                      "run without --compile / --decode compiled", markup=False)
            sys.exit(1)
        err.print(f"internal error: {type(e).__name__}: {e} (set VOCOCLI_DEBUG=1 for the traceback)", markup=False)
        sys.exit(2)


def interrupted_message(command: list[str]) -> str:
    """What Ctrl-C leaves behind, for the command that was interrupted."""
    name = command[0] if command else ""
    if name == "compress":
        return "interrupted; the finished cache chunks are kept: the same command resumes after them"
    if name in ("eval", "experiment"):
        return "interrupted; finished work is kept: the same command resumes it"
    if name == "train":
        return "interrupted; the last save is kept: add --resume to continue from it"
    return "interrupted"


def _compile_failure(e: BaseException) -> str | None:
    """When torch.compile failed for want of a working toolchain on this machine (no C++ compiler
    for inductor's CPU kernels, no Triton, a GPU too old for it), the reason in one line; None for
    anything else, which stays an internal error."""
    if "torch._inductor.exc" not in sys.modules:
        return None
    from torch._inductor import exc

    machine = tuple(getattr(exc, n) for n in ("InvalidCxxCompiler", "CppCompileError", "CUDACompileError",
                                              "TritonMissing", "GPUTooOldForTriton") if hasattr(exc, n))
    for _ in range(4):  # BackendCompilerFailed / InductorError wrap the real cause
        if isinstance(e, machine):
            text = str(e).strip()
            return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__
        e = getattr(e, "inner_exception", None) or e.__cause__
        if e is None:
            return None
    return None


if __name__ == "__main__":
    main()


def _help_conventions(command) -> None:
    """One way of writing every command's help: on/off flags show no value, options taking text
    say TEXT (also when repeatable), arguments are upper-case (typer writes a required one in
    braces, an optional one in brackets)."""
    for sub in getattr(command, "commands", {}).values():
        _help_conventions(sub)
    for param in getattr(command, "params", []):
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and param.is_flag:
            param.metavar = ""
        elif kind == "option" and param.multiple and param.metavar is None:
            param.metavar = "TEXT"
        elif kind == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    help_option = command.get_help_option

    def get_help_option(ctx):
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
