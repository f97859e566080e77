"""A queue that stops answering: the taskcluster client lets the session's total timeout through as a bare
``TimeoutError`` (it only wraps ``aiohttp.ClientError``), so the worker's report, crash recovery and
termination check must treat it as the failed call it is — never let it escape as a traceback.

The queue here is a local HTTP server that accepts requests and never answers; the client session has a
short total timeout (the worker's has aiohttp's default, 300 s), so the test takes about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from megalodon_core.config import parse_config
from megalodon_core.journal import ClaimJournal, ClaimRecord
from megalodon_core.plugins import PluginHost
from megalodon_core.task import TaskRun
from megalodon_core.tasklog import TaskLog
from megalodon_core.testing import Harness, make_task
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker.recovery import recover_runs
from megalodon_core.worker.report import report_resolution
from megalodon_core.worker.termination import TerminationCheck
from megalodon_core.worker_context import WorkerContext

CREDS = {"clientId": "task-client", "accessToken": "not-a-real-token"}


@pytest.fixture
async def silent_root_url() -> AsyncIterator[str]:
    """The root URL of a server that takes every request and never answers (until the test ends)."""
    released = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", never)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        released.set()
        await runner.cleanup()


@pytest.fixture
async def ctx(harness: Harness, silent_root_url: str) -> AsyncIterator[WorkerContext]:
    data = {**harness.config("unit"), "rootURL": silent_root_url}
    config = parse_config(data, PluginHost().config_fields())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
        yield WorkerContext(config, PluginHost(load_entry_points=False), session, config.credentials)


async def test_a_report_the_queue_never_answers_is_a_failed_report(ctx: WorkerContext, tmp_path: Path) -> None:
    now = utcnow()
    run = TaskRun(
        task_id="AAAAAAAAAAAAAAAAAAAAAA",
        run_id=0,
        task=make_task({}, "unit"),
        worker=ctx,
        credentials=CREDS,
        taken_until=now + dt.timedelta(minutes=5),
        task_dir=tmp_path,
        log=TaskLog(tmp_path / "log"),
    )
    reported = await report_resolution(run, "completed", "completed", plugins=ctx.plugins, duration=1.0)
    assert reported is False  # the journal keeps the claim: resolved before the worker exits


async def test_recovery_survives_a_queue_that_never_answers(ctx: WorkerContext, tmp_path: Path) -> None:
    journal = ClaimJournal(tmp_path / "journal")
    expires = iso(utcnow() + dt.timedelta(minutes=5))
    journal.record(ClaimRecord("BBBBBBBBBBBBBBBBBBBBBB", 0, CREDS, expires, str(tmp_path / "tasks" / "gone")))
    assert await recover_runs(journal, ctx, clean_task_dirs=False) == 0


async def test_a_termination_check_the_worker_manager_never_answers_says_no(ctx: WorkerContext) -> None:
    check = TerminationCheck(ctx.config, enabled=True)
    assert await check.says_terminate(ctx, now=True) is False


async def test_a_reclaim_the_queue_never_answers_is_retried(
    ctx: WorkerContext, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Escaping, the timeout ended the reclaim loop silently: the run went on unreclaimed until its claim
    expired under it."""
    from megalodon_core.reclaim import reclaim_loop

    run = TaskRun(
        task_id="CCCCCCCCCCCCCCCCCCCCCC",
        run_id=0,
        task=make_task({}, "unit"),
        worker=ctx,
        credentials=CREDS,
        taken_until=utcnow(),  # reclaim at once
        task_dir=tmp_path,
        log=TaskLog(tmp_path / "log"),
    )
    reclaimer = asyncio.create_task(reclaim_loop(run))
    try:
        async with asyncio.timeout(60):
            while "reclaim of CCCCCCCCCCCCCCCCCCCCCC/0 failed" not in caplog.text and not reclaimer.done():
                await asyncio.sleep(0.05)
        assert not reclaimer.done(), reclaimer.exception()
        assert not run.aborted.is_set()
    finally:
        reclaimer.cancel()
        with contextlib.suppress(BaseException):
            await reclaimer


async def test_a_run_ending_before_its_first_reclaim_never_starts_a_reclaim_task(
    ctx: WorkerContext, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Reclaimer is a timer until the first reclaim is due: a short run costs no task; a due one reclaims
    at once (here against a queue that never answers: the loop retries, the run is not aborted)."""
    from megalodon_core.reclaim import Reclaimer

    def new_run(task_id: str, taken_until: dt.datetime) -> TaskRun:
        return TaskRun(
            task_id=task_id,
            run_id=0,
            task=make_task({}, "unit"),
            worker=ctx,
            credentials=CREDS,
            taken_until=taken_until,
            task_dir=tmp_path,
            log=TaskLog(tmp_path / f"{task_id}.log"),
        )

    short = Reclaimer(new_run("EEEEEEEEEEEEEEEEEEEEEE", utcnow() + dt.timedelta(minutes=20)))
    await asyncio.sleep(0)
    assert short._task is None
    await short.stop()
    assert short._task is None and short._timer is None

    due_run = new_run("FFFFFFFFFFFFFFFFFFFFFF", utcnow())
    due = Reclaimer(due_run)
    try:
        async with asyncio.timeout(60):
            while "reclaim of FFFFFFFFFFFFFFFFFFFFFF/0 failed" not in caplog.text:
                await asyncio.sleep(0.05)
        assert due._task is not None and not due._task.done()
        assert not due_run.aborted.is_set()
    finally:
        await due.stop()
    assert due._task.cancelled()


async def test_an_artifact_the_queue_never_creates_is_resource_unavailable(ctx: WorkerContext) -> None:
    """The pipeline turns ExecutionErrors into the run's resolution; a bare timeout escaped it instead."""
    from megalodon_core.errors import ResourceUnavailable
    from megalodon_core.upload import Publisher

    publisher = Publisher(lambda: ctx.queue(CREDS), lambda creds: None, ctx.session)
    expires = utcnow() + dt.timedelta(hours=1)
    with pytest.raises(ResourceUnavailable, match=r"Could not create artifact 'public/x\.txt': TimeoutError"):
        await publisher.error("DDDDDDDDDDDDDDDDDDDDDD", 0, "public/x.txt", "file-missing-on-worker", "gone", expires)


async def test_a_claim_the_queue_never_answers_is_an_empty_claim(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim loop survives it: no task, a warning naming the error, and the loop polls again."""
    from megalodon_core.worker import Worker
    from megalodon_core.worker import loop as worker_loop

    monkeypatch.setattr(worker_loop, "CLAIM_ERROR_BACKOFF", 0)
    worker = Worker(ctx.config, PluginHost(load_entry_points=False))
    worker.ctx = ctx
    assert await worker._claim(1) == []
    assert any("claimWork failed: TimeoutError" in r.getMessage() for r in caplog.records)
