"""The ``hello`` feature: an environment variable before the run, an artifact after it.

The smallest useful feature: a worker-lifetime :class:`~megalodon_core.contracts.Feature` selected by name
(the default ``is_requested``: the executor declared a request for ``hello``) and a per-task
:class:`~megalodon_core.contracts.TaskFeature` holding that task's state.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from megalodon_core.contracts import Feature, TaskFeature
from megalodon_core.errors import ExecutionError, ResourceUnavailable

if TYPE_CHECKING:
    from megalodon_core.errors import ExecutionErrors
    from megalodon_core.task import TaskRun

ARTIFACT = "public/hello.txt"
ENV = "MEGALODON_HELLO"


class HelloFeature(Feature):
    name = "hello"

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        return HelloTask(run, str(self.worker.config.extra("helloGreeting", "hello")))


class HelloTask(TaskFeature):
    def __init__(self, run: TaskRun, greeting: str) -> None:
        self.run = run
        config = run.worker.config
        self.message = f"{greeting} from {config.workerGroup}/{config.workerId}"

    def reserved_artifacts(self) -> list[str]:
        return [ARTIFACT]

    async def start(self) -> None:
        self.run.data.env[ENV] = self.message
        self.run.log.info(f"hello feature: {ENV} set")

    async def stop(self, errors: ExecutionErrors) -> None:
        run = self.run
        state, _ = errors.resolution()
        text = f"{self.message}\ntask {run.task_id} run {run.run_id}: {state} so far\n"
        # A worker-private directory, never the task directory: the task may have left any name there as a
        # symlink, and the worker (root under the multiuser engine) would write through it.
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="megalodon-hello-"))
        try:
            path = staging / "hello-feature.txt"
            await asyncio.to_thread(path.write_text, text)
            await run.publisher().file(
                run.task_id,
                run.run_id,
                ARTIFACT,
                path,
                content_type="text/plain; charset=utf-8",
                content_encoding="identity",
                expires=run.expires,
                object_storage=run.worker.config.createObjectArtifacts,
            )
        except ExecutionError as exc:
            errors.add(ResourceUnavailable(f"hello feature: could not upload {ARTIFACT}: {exc.message}"))
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
