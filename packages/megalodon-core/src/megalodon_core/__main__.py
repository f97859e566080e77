"""``python -m megalodon_core`` is the ``megalodon`` command."""

from .entry import main

main()
