"""The ``megalodon`` console script: answers ``--version`` before the CLI (typer, rich, plugins) is imported.

``megalodon --version`` is what deployment scripts and health checks call; building the typer app and the
plugin host for it would cost several times a bare ``import typer``.  Everything else goes to
:func:`megalodon_core.cli.main` unchanged.
"""

from __future__ import annotations

import sys

#: Options that may stand next to ``--version`` and change nothing about what it prints.
_VERSION_COMPANIONS = frozenset({"--version", "-v", "--verbose"})


def main() -> None:
    args = sys.argv[1:]
    if "--version" in args and all(a in _VERSION_COMPANIONS for a in args):
        from . import __version__

        print(f"megalodon {__version__}")
        return
    from .cli import main as cli_main

    cli_main()
