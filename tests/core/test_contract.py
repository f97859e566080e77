"""The executor contract as a third party meets it: the smallest correct executor is one class with two
methods, a dict is a valid payload model, and the pipeline (not each executor) refuses requested features
that are missing or whose run data the executor does not provide.  Everything runs through an unmodified
worker against the Taskcluster double over HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.contracts import (
    ExecutorInfo,
    ExecutorRun,
    Feature,
    FeatureInfo,
    TaskFeature,
    executor_for,
)
from megalodon_core.errors import Failure, MalformedPayload
from megalodon_core.plugins import PluginHost
from megalodon_core.rundata import FeatureRequest, RunDataField
from megalodon_core.task import TaskRun
from megalodon_core.testing import Harness, Outcome
from megalodon_core.worker import Worker


class SayRun(ExecutorRun[dict[str, Any]]):
    """The smallest correct executor: ``{"say": text}`` prints ``text``; ``{"fail": true}`` fails."""

    def parse_payload(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("say"), str):
            raise MalformedPayload("payload.say: a string is required")
        return raw

    async def run(self) -> None:
        self.task_run.log.write(f"said: {self.payload['say']}\n".encode())
        if self.payload.get("fail"):
            raise Failure("asked to fail")


class RequestingRun(SayRun):
    """Asks for the features listed in ``payload.features`` and provides no run data at all."""

    def requested_features(self) -> list[FeatureRequest]:
        return [FeatureRequest(name) for name in self.payload.get("features", [])]


class NeedsUser(Feature):
    """A feature that cannot work without knowing the task's OS user."""

    name = "needsUser"
    needs: ClassVar[tuple[RunDataField, ...]] = ("task_user",)
    started: ClassVar[list[str]] = []

    def new_task_feature(self, run: TaskRun) -> TaskFeature:
        feature = self

        class Task(TaskFeature):
            async def start(self) -> None:
                feature.started.append(run.task_id)

        return Task()


class ThirdParty:
    __name__ = "third-party-test"

    @hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [
            ExecutorInfo(name="say", factory=executor_for("say", SayRun), summary="says", payload_schema=dict),
            ExecutorInfo(
                name="requesting", factory=executor_for("requesting", RequestingRun), summary="", payload_schema=dict
            ),
        ]

    @hookimpl
    def megalodon_register_features(self) -> list[FeatureInfo]:
        return [FeatureInfo(name="needsUser", factory=NeedsUser, summary="needs the task user")]


async def run_task(harness: Harness, payload: Any, executor: str) -> Outcome:
    worker_type = harness.worker_type()
    task_id = await harness.create(payload, worker_type)
    host = PluginHost(plugins=[ThirdParty()])
    worker = Worker(parse_config(harness.config(worker_type, executor=executor), host.config_fields()), host)
    code = await worker.run()
    return await harness.outcome(task_id, code)


async def test_smallest_executor_completes_and_fails(harness: Harness) -> None:
    """One class, two methods, no maxRunTime field: the default max run time is the worker's limit."""
    out = await run_task(harness, {"say": "hello from a third party"}, "say")
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "said: hello from a third party" in out.log
    assert out.artifacts["public/logs/live_backing.log"]["storageType"] in ("s3", "object")
    failed = await run_task(harness, {"say": "x", "fail": True}, "say")
    assert (failed.state, failed.reason) == ("failed", "failed"), failed.log
    assert "asked to fail" in failed.log


async def test_smallest_executor_malformed_payload_names_the_field(harness: Harness) -> None:
    out = await run_task(harness, {"shout": 1}, "say")
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert "payload.say: a string is required" in out.log


async def test_requested_feature_no_plugin_provides_is_malformed(harness: Harness) -> None:
    out = await run_task(harness, {"say": "x", "features": ["noSuchFeature"]}, "requesting")
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'use feature "noSuchFeature", but no megalodon plugin installed on this worker provides it' in out.log
    assert "said:" not in out.log


async def test_feature_whose_run_data_the_executor_lacks_is_malformed_not_silent(harness: Harness) -> None:
    NeedsUser.started.clear()
    out = await run_task(harness, {"say": "x", "features": ["needsUser"]}, "requesting")
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'feature "needsUser", which needs run data "task_user" from the executor' in out.log
    assert "the requesting executor does not provide it" in out.log
    assert NeedsUser.started == [], "a feature whose needs are unmet must never start"
    assert "said:" not in out.log
