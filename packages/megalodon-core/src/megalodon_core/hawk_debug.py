"""mohawk's debug messages formatted only when they are emitted.

mohawk (the Hawk signer under the ``taskcluster`` client) builds two debug messages for every signed request
with ``pprint.pformat`` of the URL's parts and of the request body, then calls ``log.debug``: the formatting
runs whether debug logging is on or not, ~56 µs of CPU per request here, four signed requests per task
(issue 13).  :func:`quiet` points mohawk's ``pprint`` at a stand-in whose ``pformat`` formats only when
mohawk's logger would emit the message: the same messages with debug on, none of the work with it off.
"""

from __future__ import annotations

import logging
import pprint
from typing import Any


class _FormatWhenEmitted:
    """``pprint`` for one mohawk module: ``pformat`` is "" unless that module's logger emits debug."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def pformat(self, obj: object, *args: Any, **kwargs: Any) -> str:
        if self._logger.isEnabledFor(logging.DEBUG):
            return pprint.pformat(obj, *args, **kwargs)
        return ""

    def __getattr__(self, name: str) -> Any:
        return getattr(pprint, name)


def quiet() -> None:
    """Install the stand-in in the mohawk modules that format eagerly (idempotent; a mohawk without them, or
    laid out otherwise, is left as it is)."""
    import mohawk.base
    import mohawk.util

    for module in (mohawk.base, mohawk.util):
        logger = getattr(module, "log", None)
        if getattr(module, "pprint", None) is pprint and isinstance(logger, logging.Logger):
            module.pprint = _FormatWhenEmitted(logger)


__all__ = ["quiet"]
