"""``run_command``'s output reader: every byte, in order, to the callback; a failing callback closes the pipe
(what asyncio's pipe transport did), and the call still ends with the command."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest

from megalodon_core.process import run_command

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def test_every_byte_arrives_in_order(tmp_path: Path) -> None:
    chunks: list[bytes] = []
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done; head -c 3000000 /dev/zero"
    result = await run_command(["sh", "-c", script], cwd=tmp_path, env=ENV, output=chunks.append, abort=asyncio.Event())
    assert result.exit_code == 0
    expected = "".join(f"line-{i}\n" for i in range(20000)).encode() + b"\0" * 3_000_000
    got = b"".join(chunks)
    assert len(got) == len(expected) and hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()


async def test_a_failing_consumer_closes_the_pipe_and_the_command_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(data: bytes) -> None:
        raise RuntimeError("the log is gone")

    result = await asyncio.wait_for(run_command(["yes"], cwd=tmp_path, env=ENV, output=fail, abort=asyncio.Event()), 60)
    assert result.signalled == signal.SIGPIPE, result
    assert "the task output's consumer failed" in caplog.text
