"""mohawk's debug messages cost nothing with debug off and are unchanged with it on (issue 13)."""

from __future__ import annotations

import logging

import mohawk
import pytest

import megalodon_core.worker_context  # noqa: F401  (installs the stand-in, as every worker does)

CREDENTIALS = {"id": "client", "key": "secret", "algorithm": "sha256"}
URL = "http://127.0.0.1:1/api/queue/v1/task/abc/runs/0/completed"


def _sign() -> str:
    sender = mohawk.Sender(CREDENTIALS, URL, "POST", content=b'{"a": 1}', content_type="application/json")
    return str(sender.request_header)


def test_nothing_is_formatted_with_debug_off(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="mohawk")
    formatted: list[object] = []
    monkeypatch.setattr("pprint.pformat", lambda obj, *a, **k: str(formatted.append(obj)))
    assert _sign().startswith("Hawk ")
    assert formatted == []
    assert not [r for r in caplog.records if r.name.startswith("mohawk")]


def test_the_same_messages_with_debug_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mohawk")
    _sign()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mohawk")]
    resource = "'resource': '/api/queue/v1/task/abc/runs/0/completed'"
    assert any(m.startswith("parsed URL parts: \n{") and resource in m for m in messages)
    assert any(m.startswith("calculating payload hash from:\n[") and "application/json" in m for m in messages)


def test_the_header_is_the_same_either_way(caplog: pytest.LogCaptureFixture) -> None:
    """The signature does not depend on logging: same nonce and timestamp, same header."""
    headers = []
    for level in (logging.INFO, logging.DEBUG):
        caplog.set_level(level, logger="mohawk")
        sender = mohawk.Sender(
            CREDENTIALS, URL, "POST", content=b"{}", content_type="application/json", nonce="n0nce", _timestamp=1
        )
        headers.append(sender.request_header)
    assert headers[0] == headers[1]
