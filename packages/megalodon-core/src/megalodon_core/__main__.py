"""``python -m megalodon_core`` is the ``megalodon`` command."""

from .cli import main

main()
