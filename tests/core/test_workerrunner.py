"""The worker side of the worker-runner protocol, against a scripted runner over real OS pipes.

Most tests run the worker side in-process on two ``os.pipe()`` pairs and play the runner on the other ends;
one runs a worker subprocess over its real stdin/stdout, and the FIFO tests use ``mkfifo``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from megalodon_core.workerrunner import (
    MAX_LINE_BYTES,
    WORKER_CAPABILITIES,
    HandshakeTimeout,
    NullRunnerProtocol,
    ProtocolClosed,
    RunnerLogHandler,
    WorkerRunnerError,
    WorkerRunnerProtocol,
    connect,
)

ALL = list(WORKER_CAPABILITIES)


class Runner:
    """The runner's ends of the protocol: writes to the worker's input fd, reads the worker's output fd."""

    def __init__(self, to_worker: int, from_worker: int) -> None:
        self.to_worker: int | None = to_worker
        self.from_worker = from_worker
        self.reader = asyncio.StreamReader(limit=4 * MAX_LINE_BYTES)
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self.from_worker, "rb", buffering=0)
        self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader), pipe)

    async def send_raw(self, data: bytes) -> None:
        assert self.to_worker is not None
        view = memoryview(data)
        while view:
            n = await asyncio.to_thread(os.write, self.to_worker, view)
            view = view[n:]

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(b"~" + json.dumps(message).encode() + b"\n")

    async def welcome(self, capabilities: list[str]) -> dict[str, Any]:
        await self.send({"type": "welcome", "capabilities": capabilities})
        return await self.recv()

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(5):
            line = await self.reader.readline()
        assert line.startswith(b"~"), line
        assert line.endswith(b"\n"), line
        msg: dict[str, Any] = json.loads(line[1:])
        return msg

    def close_input(self) -> None:
        """What the worker sees when worker-runner exits: EOF on its input."""
        if self.to_worker is not None:
            os.close(self.to_worker)
            self.to_worker = None

    def close(self) -> None:
        self.close_input()
        if self._transport is not None:
            self._transport.close()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[WorkerRunnerProtocol, Runner]]:
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    proto = await WorkerRunnerProtocol.from_fds(to_worker_r, from_worker_w)
    runner = Runner(to_worker_w, from_worker_r)
    await runner.open()
    yield proto, runner
    await proto.close()
    runner.close()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


# -- handshake ---------------------------------------------------------------------------------------------------


async def test_welcome_hello_and_capability_intersection(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    assert not proto.ready
    assert not proto.capable("log")
    hello = await runner.welcome(["log", "shutdown", "something-new"])
    assert hello == {"type": "hello", "capabilities": ALL}
    await proto.wait_ready(5)
    assert proto.ready and proto.settled
    assert proto.capabilities == frozenset({"log", "shutdown"})
    assert proto.capable("shutdown")
    assert not proto.capable("graceful-termination")
    assert not proto.capable("something-new")


async def test_welcome_without_capabilities_list_means_none(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.send({"type": "welcome"})
    assert (await runner.recv())["type"] == "hello"
    await proto.wait_ready(5)
    assert proto.capabilities == frozenset()


async def test_wait_ready_times_out_without_welcome(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, _ = pair
    with pytest.raises(HandshakeTimeout):
        await proto.wait_ready(0.1)
    assert proto.settled and not proto.ready
    assert not proto.capable("log")


async def test_wait_ready_raises_on_eof_before_welcome(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    runner.close_input()
    with pytest.raises(ProtocolClosed):
        await proto.wait_ready(5)


# -- runner -> worker --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("finish_tasks", [True, False])
async def test_graceful_termination_delivered(pair: tuple[WorkerRunnerProtocol, Runner], finish_tasks: bool) -> None:
    proto, runner = pair
    sync_got: list[dict[str, Any]] = []
    async_got: list[dict[str, Any]] = []

    async def async_cb(msg: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        async_got.append(msg)

    proto.on("graceful-termination", sync_got.append)
    proto.on("graceful-termination", async_cb)
    proto.start()
    await runner.welcome(ALL)
    await runner.send({"type": "graceful-termination", "finish-tasks": "yes"})  # malformed: ignored
    await runner.send({"type": "graceful-termination", "finish-tasks": finish_tasks})
    await _until(lambda: sync_got and async_got)
    expected = {"type": "graceful-termination", "finish-tasks": finish_tasks}
    assert sync_got == [expected]
    assert async_got == [expected]


async def test_new_credentials_delivered(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    got: list[dict[str, Any]] = []
    proto.on("new-credentials", got.append)
    proto.start()
    await runner.welcome(ALL)
    await runner.send({"type": "new-credentials", "client-id": "c1", "access-token": "t1"})
    await runner.send({"type": "new-credentials", "client-id": "c1"})  # malformed: ignored
    await runner.send({"type": "new-credentials", "client-id": "c2", "access-token": "t2", "certificate": "{}"})
    await _until(lambda: len(got) == 2)
    await asyncio.sleep(0.05)
    assert got == [
        {"type": "new-credentials", "client-id": "c1", "access-token": "t1"},
        {"type": "new-credentials", "client-id": "c2", "access-token": "t2", "certificate": "{}"},
    ]


async def test_failing_callback_does_not_stop_the_protocol(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    got: list[dict[str, Any]] = []

    def bad(msg: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    proto.on("graceful-termination", bad)
    proto.on("graceful-termination", got.append)
    proto.start()
    await runner.welcome(ALL)
    await runner.send({"type": "graceful-termination", "finish-tasks": True})
    await runner.send({"type": "graceful-termination", "finish-tasks": False})
    await _until(lambda: len(got) == 2)


async def test_garbage_lines_are_ignored(pair: tuple[WorkerRunnerProtocol, Runner], caplog: Any) -> None:
    proto, runner = pair
    got: list[dict[str, Any]] = []
    proto.on("graceful-termination", got.append)
    proto.start()
    caplog.set_level(logging.INFO, logger="megalodon_core.workerrunner")
    await runner.send_raw(b"plain text from the runner\n")
    await runner.send_raw(b"\n")
    await runner.send_raw(b"~{not json\n")
    await runner.send_raw(b"~[1, 2]\n")
    await runner.send_raw(b'~{"no": "type"}\n')
    await runner.send_raw(b'~{"type": "unregistered"}\n')
    # an over-long line, first without a newline in sight, then one arriving whole
    await runner.send_raw(b'~{"type": "graceful-termination", "x": "' + b"a" * (MAX_LINE_BYTES + 10))
    await runner.send_raw(b'", "finish-tasks": true}\n')
    await runner.send_raw(b'~{"type": "graceful-termination", "finish-tasks": true, "x": "' + b"b" * MAX_LINE_BYTES)
    await runner.send_raw(b'"}\n')
    # still works afterwards, CRLF included
    hello = await runner.welcome(["graceful-termination"])
    assert hello["type"] == "hello"
    await runner.send_raw(b'~{"type": "graceful-termination", "finish-tasks": false}\r\n')
    await _until(lambda: got)
    assert got == [{"type": "graceful-termination", "finish-tasks": False}]
    text = caplog.text
    assert "plain text from the runner" in text
    assert "invalid worker-runner protocol line: ~{not json" in text
    assert "without a string type" in text
    assert "no callback registered for worker-runner message 'unregistered'" in text
    assert text.count("longer than") == 2


async def test_eof_from_runner_keeps_worker_running(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    eofs: list[str] = []

    async def on_eof() -> None:
        eofs.append("async")

    proto.on_eof(lambda: eofs.append("sync"))
    proto.on_eof(on_eof)
    proto.start()
    await runner.welcome(ALL)
    runner.close_input()
    await _until(lambda: len(eofs) == 2)
    assert proto.eof
    # the runner may still be reading: sending still works
    assert await proto.shutdown()
    assert await runner.recv() == {"type": "shutdown"}


# -- worker -> runner --------------------------------------------------------------------------------------------


async def test_log_forwarded_when_capable(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    assert not proto.log("before the handshake")
    await runner.welcome(ALL)
    await proto.wait_ready(5)
    assert proto.log("line one")
    thread = threading.Thread(target=proto.log, args=("from a thread\nwith a newline",))
    thread.start()
    thread.join()
    assert await runner.recv() == {"type": "log", "body": {"textPayload": "line one"}}
    assert await runner.recv() == {"type": "log", "body": {"textPayload": "from a thread\nwith a newline"}}


async def test_log_not_sent_without_capability(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.welcome(["shutdown"])
    await proto.wait_ready(5)
    assert not proto.log("nobody wants this")
    assert await proto.shutdown()
    assert await runner.recv() == {"type": "shutdown"}  # nothing was sent before it


async def test_error_report_shape(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.welcome(ALL)
    await proto.wait_ready(5)
    assert await proto.error_report("disk full", {"path": Path("/tmp"), "free": 0})
    assert await runner.recv() == {
        "type": "error-report",
        "title": "megalodon error",
        "kind": "worker-error",
        "description": "disk full",
        "extra": {"path": "/tmp", "free": 0},
    }
    assert await proto.error_report("no extra")
    assert (await runner.recv())["extra"] == {}


async def test_error_report_and_shutdown_only_when_capable(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.welcome(["log"])
    await proto.wait_ready(5)
    assert not await proto.shutdown()
    assert not await proto.error_report("boom")
    proto.log("sentinel")
    assert await runner.recv() == {"type": "log", "body": {"textPayload": "sentinel"}}


async def test_broken_pipe_drops_capabilities(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.welcome(ALL)
    await proto.wait_ready(5)
    runner.close()  # the runner is gone: both ends closed
    proto.log("into the void")
    await _until(lambda: not proto.capable("log"))
    assert not await proto.shutdown()  # the caller falls back to an OS shutdown
    with pytest.raises(ProtocolClosed):
        await proto.send({"type": "shutdown"})


async def test_hello_precedes_everything_and_order_is_kept(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    proto.start()
    await runner.send({"type": "welcome", "capabilities": ALL})
    await proto.wait_ready(5)
    for i in range(200):
        proto.log(f"line {i}")
    assert await proto.shutdown()
    assert (await runner.recv())["type"] == "hello"
    lines = [(await runner.recv())["body"]["textPayload"] for _ in range(200)]
    assert lines == [f"line {i}" for i in range(200)]
    assert await runner.recv() == {"type": "shutdown"}


# -- logging handler ---------------------------------------------------------------------------------------------


async def test_log_handler_holds_early_records_then_forwards(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    fallback = Collect()
    handler = RunnerLogHandler(proto, fallback)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.worker.forward")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        proto.start()
        logger.info("early")
        await runner.welcome(ALL)
        await proto.wait_ready(5)
        logger.warning("late")
        # the protocol's own records never loop back into the protocol
        logging.getLogger("megalodon_core.workerrunner").addHandler(handler)
        try:
            logging.getLogger("megalodon_core.workerrunner").warning("about myself")
        finally:
            logging.getLogger("megalodon_core.workerrunner").removeHandler(handler)
        assert await runner.recv() == {"type": "log", "body": {"textPayload": "INFO early"}}
        assert await runner.recv() == {"type": "log", "body": {"textPayload": "WARNING late"}}
        assert fallback.lines == ["about myself"]
    finally:
        logger.removeHandler(handler)
        handler.close()


async def test_log_handler_falls_back_without_capability(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, runner = pair
    fallback = Collect()
    handler = RunnerLogHandler(proto, fallback)
    logger = logging.getLogger("test.worker.fallback")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        proto.start()
        logger.info("early")
        await runner.welcome(["shutdown"])
        await proto.wait_ready(5)
        logger.info("late")
        assert fallback.lines == ["early", "late"]
        assert await proto.shutdown()
        assert await runner.recv() == {"type": "shutdown"}
    finally:
        logger.removeHandler(handler)
        handler.close()


async def test_log_handler_close_releases_held_records(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    proto, _ = pair
    fallback = Collect()
    handler = RunnerLogHandler(proto, fallback)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "held", None, None)
    handler.handle(record)
    assert fallback.lines == []
    handler.close()
    assert fallback.lines == ["held"]


async def test_log_handler_is_reentrancy_safe(pair: tuple[WorkerRunnerProtocol, Runner]) -> None:
    """A formatter that logs (as a misbehaving library might) must not recurse forever."""
    proto, runner = pair
    fallback = Collect()
    handler = RunnerLogHandler(proto, fallback)
    logger = logging.getLogger("test.worker.reentrant")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    class Chatty(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            logger.info("formatting %s", record.getMessage())
            return super().format(record)

    handler.setFormatter(Chatty())
    try:
        proto.start()
        await runner.welcome(ALL)
        await proto.wait_ready(5)
        logger.info("outer")
        assert await runner.recv() == {"type": "log", "body": {"textPayload": "outer"}}
        assert fallback.lines == ["formatting outer"]
    finally:
        logger.removeHandler(handler)
        handler.close()


# -- null protocol -----------------------------------------------------------------------------------------------


async def test_null_protocol() -> None:
    proto = await connect(with_worker_runner=False, protocol_pipe="/ignored")
    assert isinstance(proto, NullRunnerProtocol)
    proto.on("graceful-termination", lambda m: None)
    proto.start()
    await proto.wait_ready(0)
    assert proto.ready and proto.settled
    assert proto.capabilities == frozenset()
    assert not proto.capable("log")
    assert not proto.log("x")
    assert not await proto.shutdown()
    assert not await proto.error_report("x", {})
    await proto.send({"type": "shutdown"})
    fallback = Collect()
    handler = RunnerLogHandler(proto, fallback)
    handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "to stderr", None, None))
    assert fallback.lines == ["to stderr"]
    await proto.close()


# -- transports --------------------------------------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    from megalodon_core.workerrunner import RunnerLogHandler, WorkerRunnerProtocol

    async def main() -> None:
        out = open(sys.argv[1], "a")

        def record(msg):
            out.write(json.dumps(msg) + "\\n")
            out.flush()

        proto = await WorkerRunnerProtocol.from_stdio()
        proto.on("graceful-termination", record)
        proto.on("new-credentials", record)
        eof = asyncio.Event()
        proto.on_eof(eof.set)
        logger = logging.getLogger("worker")
        logger.setLevel(logging.INFO)
        logger.addHandler(RunnerLogHandler(proto))
        proto.start()
        await proto.wait_ready(5)
        print("stray print goes to stderr", flush=True)
        logger.info("hello from the worker")
        await proto.error_report("boom", {"n": 1})
        await proto.shutdown()
        await eof.wait()
        record({"type": "eof"})
        await proto.close()

    asyncio.run(main())
    """
)


async def test_stdio_transport_in_a_subprocess(tmp_path: Path) -> None:
    received = tmp_path / "received.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER_SCRIPT,
        str(received),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:

        async def send(msg: dict[str, Any]) -> None:
            assert proc.stdin is not None
            proc.stdin.write(b"~" + json.dumps(msg).encode() + b"\n")
            await proc.stdin.drain()

        async def recv() -> dict[str, Any]:
            assert proc.stdout is not None
            async with asyncio.timeout(10):
                line = await proc.stdout.readline()
            assert line.startswith(b"~"), line
            msg: dict[str, Any] = json.loads(line[1:])
            return msg

        proc.stdin.write(b"runner chatter\n")
        await send({"type": "welcome", "capabilities": [*ALL, "future"]})
        assert await recv() == {"type": "hello", "capabilities": ALL}
        assert await recv() == {"type": "log", "body": {"textPayload": "hello from the worker"}}
        assert await recv() == {
            "type": "error-report",
            "title": "megalodon error",
            "kind": "worker-error",
            "description": "boom",
            "extra": {"n": 1},
        }
        assert await recv() == {"type": "shutdown"}
        await send({"type": "graceful-termination", "finish-tasks": True})
        await send({"type": "new-credentials", "client-id": "c", "access-token": "t", "certificate": "cert"})
        proc.stdin.close()
        async with asyncio.timeout(10):
            stderr = await proc.stderr.read()
            assert await proc.wait() == 0, stderr.decode()
            assert await proc.stdout.read() == b""  # nothing but protocol lines on stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"stray print goes to stderr" in stderr
    lines = [json.loads(line) for line in received.read_text().splitlines()]
    assert lines == [
        {"type": "graceful-termination", "finish-tasks": True},
        {"type": "new-credentials", "client-id": "c", "access-token": "t", "certificate": "cert"},
        {"type": "eof"},
    ]


def _runner_open(base: Path, order: str) -> tuple[int, int]:
    """Blocking opens as a runner would do them (in a thread): returns (write-to-worker, read-from-worker)."""
    to_worker = str(base) + "-output"
    from_worker = str(base) + "-input"
    if order == "read-first":
        r = os.open(from_worker, os.O_RDONLY)
        w = os.open(to_worker, os.O_WRONLY)
    else:
        w = os.open(to_worker, os.O_WRONLY)
        r = os.open(from_worker, os.O_RDONLY)
    return w, r


@pytest.mark.parametrize("order", ["read-first", "write-first"])
async def test_fifo_transport(tmp_path: Path, order: str) -> None:
    base = tmp_path / "proto"
    os.mkfifo(str(base) + "-input")
    os.mkfifo(str(base) + "-output")
    runner_side = asyncio.ensure_future(asyncio.to_thread(_runner_open, base, order))
    await asyncio.sleep(0.05)  # let the runner block in open() first, as a real runner started earlier would
    async with asyncio.timeout(5):
        proto = await WorkerRunnerProtocol.from_pipe(str(base), connect_timeout=5)
        w, r = await runner_side
    runner = Runner(w, r)
    await runner.open()
    got: list[dict[str, Any]] = []
    proto.on("graceful-termination", got.append)
    eof = asyncio.Event()
    proto.on_eof(eof.set)
    proto.start()
    try:
        # nothing from the runner yet: the worker must not mistake that for EOF
        await asyncio.sleep(0.1)
        assert not proto.eof
        assert await runner.welcome(ALL) == {"type": "hello", "capabilities": ALL}
        await proto.wait_ready(5)
        await runner.send({"type": "graceful-termination", "finish-tasks": False})
        await _until(lambda: got)
        assert got == [{"type": "graceful-termination", "finish-tasks": False}]
        assert await proto.shutdown()
        assert await runner.recv() == {"type": "shutdown"}
        runner.close_input()
        async with asyncio.timeout(5):
            await eof.wait()
    finally:
        await proto.close()
        runner.close()


async def test_fifo_worker_first_then_runner(tmp_path: Path) -> None:
    """The worker may start before the runner opens anything; it waits on the loop, not in open()."""
    base = tmp_path / "proto"
    os.mkfifo(str(base) + "-input")
    os.mkfifo(str(base) + "-output")
    worker_side = asyncio.ensure_future(WorkerRunnerProtocol.from_pipe(str(base), connect_timeout=5))
    await asyncio.sleep(0.1)
    assert not worker_side.done()
    w, r = await asyncio.to_thread(_runner_open, base, "write-first")
    proto = await worker_side
    runner = Runner(w, r)
    await runner.open()
    try:
        proto.start()
        assert (await runner.welcome(["log"]))["type"] == "hello"
        await proto.wait_ready(5)
        assert proto.capabilities == frozenset({"log"})
    finally:
        await proto.close()
        runner.close()


async def test_fifo_errors(tmp_path: Path) -> None:
    base = tmp_path / "proto"
    with pytest.raises(WorkerRunnerError, match="cannot connect"):
        await WorkerRunnerProtocol.from_pipe(str(base))
    (tmp_path / "proto-output").write_text("")
    os.mkfifo(str(base) + "-input")
    with pytest.raises(WorkerRunnerError, match="not a FIFO"):
        await WorkerRunnerProtocol.from_pipe(str(base))
    os.unlink(tmp_path / "proto-output")
    os.mkfifo(str(base) + "-output")
    with pytest.raises(WorkerRunnerError, match="did not open it"):
        await WorkerRunnerProtocol.from_pipe(str(base), connect_timeout=0.2)


async def test_regular_file_stdio_falls_back_to_threads(tmp_path: Path) -> None:
    """stdin/stdout may be plain files (a debugging run): epoll cannot poll those, threads are used."""
    inbox = tmp_path / "in"
    inbox.write_bytes(b'~{"type": "welcome", "capabilities": ["shutdown"]}\n')
    outbox = tmp_path / "out"
    proto = await WorkerRunnerProtocol.from_fds(
        os.open(inbox, os.O_RDONLY), os.open(outbox, os.O_WRONLY | os.O_CREAT, 0o600)
    )
    try:
        await proto.wait_ready(5)
        assert await proto.shutdown()
    finally:
        await proto.close()
    lines = outbox.read_bytes().splitlines()
    assert [json.loads(line[1:]) for line in lines] == [{"type": "hello", "capabilities": ALL}, {"type": "shutdown"}]
