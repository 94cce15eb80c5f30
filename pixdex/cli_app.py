"""pixdex's typer app: how its help reads and what Ctrl-C says, the same for every command.

:class:`PixdexTyper` is ``typer.Typer`` with pixdex's defaults; ``pixdex/cli.py`` builds the app and its
sub-apps with it, so every command registered with ``app.command(NAME)(function)`` gets them:

- ``-h`` works wherever ``--help`` does (click passes ``help_option_names`` down to every subcommand);
- usage lines in click's own style, ``pixdex index [OPTIONS] PATHS...`` and ``pixdex search [OPTIONS]
  [QUERY]`` (recent typer writes ``{paths}...``);
- an option's value is named by its metavar, ``--store DIR``, ``--batch-size N``; a flag shows none
  (recent typer writes ``<bool>``, ``<list[str]>``). An option without a metavar gets one from its type;
- Ctrl-C in a command prints the interrupt's message (:class:`pixdex.errors.Interrupted` says what was
  kept) and exits with ``ExitCode.INTERRUPTED`` (typer versions differ: 130 in silence, or click's
  "Aborted!" and 1).

Only typer and the standard library are imported, so ``pixdex --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any, get_args, get_origin

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from pixdex.errors import ExitCode

HELP_OPTION_NAMES = ["-h", "--help"]

# The metavar of an option whose value type is ... (click's type names and Python's).
_METAVARS = {"int": "N", "integer": "N", "float": "NUMBER", "path": "PATH", "str": "TEXT", "text": "TEXT"}


def _type_name(param: Any) -> str:
    desc = getattr(param, "type_descriptor", None)  # typer >= 0.17's own parameters
    if desc is not None:
        ann = desc.annotation
        if get_origin(ann) is list:
            ann = get_args(ann)[0]
        return getattr(ann, "__name__", str(ann)).lower()
    return str(getattr(getattr(param, "type", None), "name", "text")).lower()


class _Argument(TyperArgument):
    """A positional argument shown as ``NAME``, ``NAME...``, ``[NAME]`` or ``[NAME]...``, without a type tag."""

    def get_usage_pieces(self, ctx) -> list[str]:
        name = self.metavar or self.name.upper()
        if not self.required:
            name = f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx) -> None:  # recent typer: "<list[Path]>" beside the name
        return None


def tidy_params(params: list) -> None:
    """Give every parameter a metavar that reads well (see the module doc); arguments become `_Argument`."""
    for p in params:
        if p.param_type_name == "argument":
            if p.metavar is None:
                p.metavar = p.name.upper()
            if type(p) is TyperArgument:
                p.__class__ = _Argument
        elif p.metavar is None:
            flag = getattr(p, "is_flag", False) or getattr(p, "count", False)
            p.metavar = "" if flag else _METAVARS.get(_type_name(p), "VALUE")


class _Tidy:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy_params(self.params)

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt


def report_interrupt(e: KeyboardInterrupt) -> int:
    """Write the line for a Ctrl-C on stderr; return the exit code."""
    sys.stderr.write(f"pixdex: {str(e) or 'interrupted'}\n")
    return int(ExitCode.INTERRUPTED)


class PixdexCommand(_Tidy, TyperCommand):
    """A command with pixdex's help style and Ctrl-C line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise typer.Exit(report_interrupt(e)) from None


class PixdexGroup(_Tidy, TyperGroup):
    """A group (the app, ``pixdex dataset``) with pixdex's help style."""


class PixdexTyper(typer.Typer):
    """``typer.Typer`` whose groups and commands use pixdex's help style and accept ``-h``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PixdexGroup)
        kwargs.setdefault("context_settings", {"help_option_names": HELP_OPTION_NAMES})
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("cls", PixdexCommand)
        return super().command(*args, **kwargs)
