"""The floor: the least any worker must do per task, as its own process, with megalodon's queue client.

``python benchmarks/floor.py CONFIG.json`` reads a generic-worker style config (rootURL, clientId,
accessToken, provisionerId, workerType, workerGroup, workerId, capacity, numberOfTasksToRun) and runs
``capacity`` loops of: ``claimWork`` -> ``true`` as a subprocess -> the backing log (gzipped, one s3 PUT) and
the live-log link, the two artifacts megalodon makes for every task at the least -> ``reportCompleted``.
It exits once ``numberOfTasksToRun`` tasks are reported.  Same client (``taskcluster.aio``), same session
type, same queue calls as the worker: what it costs is what a task costs any worker written with that
client, which is the baseline the per-task benchmark compares megalodon to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import taskcluster.aio

LOG_CONTENT_TYPE = "text/plain; charset=utf-8"
BACKING = "public/logs/live_backing.log"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def publish_and_report(
    session: aiohttp.ClientSession, tq: Any, task_id: str, run_id: str, expires: str, raw: bytes
) -> None:
    """What megalodon does for every task at the least: the gzipped backing log, the live-log link, the report."""
    body = gzip.compress(raw, 6)
    resp = await tq.createArtifact(
        task_id,
        run_id,
        BACKING,
        {"storageType": "s3", "contentType": LOG_CONTENT_TYPE, "expires": expires, "contentLength": len(raw)},
    )
    headers = {"Content-Type": LOG_CONTENT_TYPE, "Content-Encoding": "gzip", "Content-Length": str(len(body))}
    async with session.put(resp["putUrl"], data=body, headers=headers) as r:
        r.raise_for_status()
    await tq.createArtifact(
        task_id,
        run_id,
        "public/logs/live.log",
        {"storageType": "link", "artifact": BACKING, "contentType": LOG_CONTENT_TYPE, "expires": expires},
    )
    await tq.reportCompleted(task_id, run_id)


async def _one_task(cfg: dict[str, Any], session: aiohttp.ClientSession, claim: dict[str, Any]) -> None:
    task_id, run_id = claim["status"]["taskId"], str(claim["runId"])
    tq = taskcluster.aio.Queue({"rootUrl": cfg["rootURL"], "credentials": claim["credentials"]}, session=session)
    proc = await asyncio.create_subprocess_exec("true")
    code = await proc.wait()
    raw = (
        f"[taskcluster {_now()}] Task ID: {task_id}\n[taskcluster {_now()}] Exit Code: {code}\n"
        f"[taskcluster {_now()}] === Task Finished ===\n"
    ).encode()
    await publish_and_report(session, tq, task_id, run_id, claim["task"]["expires"], raw)


async def main_async(cfg: dict[str, Any]) -> int:
    queue_id = f"{cfg['provisionerId']}/{cfg['workerType']}"
    creds = {"clientId": cfg["clientId"], "accessToken": cfg["accessToken"]}
    wanted = int(cfg.get("numberOfTasksToRun", 1))
    capacity = int(cfg.get("capacity", 1))
    started = 0
    async with aiohttp.ClientSession() as session:
        wq = taskcluster.aio.Queue({"rootUrl": cfg["rootURL"], "credentials": creds}, session=session)

        async def loop() -> None:
            nonlocal started
            while started < wanted:
                started += 1
                claims: list[dict[str, Any]] = []
                while not claims:
                    claims = (
                        await wq.claimWork(
                            queue_id, {"tasks": 1, "workerGroup": cfg["workerGroup"], "workerId": cfg["workerId"]}
                        )
                    )["tasks"]
                await _one_task(cfg, session, claims[0])

        await asyncio.gather(*(loop() for _ in range(capacity)))
    return 0


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    return asyncio.run(main_async(cfg))


if __name__ == "__main__":
    sys.exit(main())
