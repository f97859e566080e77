"""Features work with any executor: a third-party executor that knows nothing of native or docker requests
taskclusterProxy, liveLog and chainOfTrust by name, provides a proxy placement as typed run data, and gets
all three; without a placement the pipeline refuses the task (malformed-payload), never a silently unset
``TASKCLUSTER_PROXY_URL``.  Real worker, real features plugin, the double over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from taskcluster.exceptions import TaskclusterFailure

from megalodon_core import hookimpl
from megalodon_core.config import parse_config
from megalodon_core.contracts import ExecutorInfo, ExecutorRun, executor_for
from megalodon_core.errors import Failure, MalformedPayload
from megalodon_core.plugins import PluginHost
from megalodon_core.rundata import FeatureRequest, ProxyPlacement
from megalodon_core.testing import Harness, Outcome
from megalodon_core.worker import Worker
from megalodon_features.chain_of_trust import load_signing_key, write_new_keypair

LIVE = "public/logs/live.log"
COT = {"public/chain-of-trust.json", "public/chain-of-trust.json.sig", "public/logs/certified.log"}


class ProbeRun(ExecutorRun[dict[str, Any]]):
    """Payload ``{"features": [...], "placement": bool}``; the run uses what the features gave it."""

    def parse_payload(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict) or not isinstance(raw.get("features"), list):
            raise MalformedPayload("payload.features: a list is required")
        return raw

    def requested_features(self) -> list[FeatureRequest]:
        return [FeatureRequest(name, required=name != "liveLog") for name in self.payload["features"]]

    async def prepare(self) -> None:
        if self.payload.get("placement"):
            self.task_run.data.proxy = ProxyPlacement("127.0.0.1", 0)

    async def run(self) -> None:
        run = self.task_run
        say = run.log.info
        async with aiohttp.ClientSession() as session:
            url = run.data.env.get("TASKCLUSTER_PROXY_URL")
            if "taskclusterProxy" in self.payload["features"]:
                if url is None:
                    raise Failure("TASKCLUSTER_PROXY_URL is unset")
                async with session.get(f"{url}/auth/v1/scopes/current") as resp:
                    say(f"proxy status {resp.status} scopes {json.dumps((await resp.json())['scopes'])}")
            if "liveLog" in self.payload["features"]:
                # The public live log artifact, as any reader gets it: a reference to the worker's stream,
                # created once the task has run for a second (livelog.REFERENCE_DELAY).
                async with asyncio.timeout(30):
                    while True:
                        try:
                            answer = await run.worker.queue({}).artifact(run.task_id, str(run.run_id), LIVE)
                            break
                        except TaskclusterFailure:
                            await asyncio.sleep(0.1)
                location = str(answer["url"])
                say(f"live log is a {answer.get('storageType')} to {'/log/' in location and 'the live log server'}")
                run.log.write(b"streamed-marker\n")
                run.log.flush()
                seen = b""
                async with session.get(location) as resp, asyncio.timeout(30):
                    async for chunk in resp.content.iter_any():
                        seen += chunk
                        if b"streamed-marker" in seen:
                            break
                say("live log streamed the marker while the task ran")


class ProbePlugin:
    __name__ = "probe-executor-test"

    @hookimpl
    def megalodon_register_executors(self) -> list[ExecutorInfo]:
        return [ExecutorInfo(name="probe", factory=executor_for("probe", ProbeRun), summary="", payload_schema=dict)]


async def run_probe(harness: Harness, payload: dict[str, Any], **config: Any) -> Outcome:
    worker_type = harness.worker_type()
    task_id = await harness.create(payload, worker_type, scopes=["auth:current-scopes"])
    host = PluginHost(plugins=[ProbePlugin()])
    cfg = parse_config(
        harness.config(worker_type, executor="probe", taskclusterProxyPort=0, **config), host.config_fields()
    )
    code = await asyncio.wait_for(Worker(cfg, host).run(), 120)
    return await harness.outcome(task_id, code)


async def test_third_party_executor_gets_proxy_live_log_and_chain_of_trust(harness: Harness, tmp_path: Path) -> None:
    key_file = tmp_path / "cot.key"
    write_new_keypair(key_file)
    public: Ed25519PublicKey = load_signing_key(key_file).public_key()
    payload = {"features": ["taskclusterProxy", "liveLog", "chainOfTrust"], "placement": True}
    out = await run_probe(harness, payload, ed25519SigningKeyLocation=str(key_file))
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    # taskclusterProxy: the URL was set from the placement and the call was signed with the task's scopes.
    assert "proxy status 200 scopes " in out.log
    assert '"auth:current-scopes"' in out.log
    # liveLog: a reference while running, streaming the task's output; a link to the backing log at the end.
    assert "live log is a reference to the live log server" in out.log
    assert "live log streamed the marker while the task ran" in out.log
    assert out.artifacts[LIVE]["storageType"] == "link"
    # chainOfTrust: the three artifacts, signed by the worker's key, with no image fields (no image).
    assert set(out.artifacts) >= COT, sorted(out.artifacts)
    document, _ = harness.double.artifact_content(out.task_id, 0, "public/chain-of-trust.json")
    signature, _ = harness.double.artifact_content(out.task_id, 0, "public/chain-of-trust.json.sig")
    public.verify(signature, document)
    certified = json.loads(document)
    assert certified["taskId"] == out.task_id
    assert "imageHash" not in certified["environment"]
    assert "public/logs/certified.log" in certified["artifacts"]


async def test_third_party_executor_without_proxy_placement_is_malformed(harness: Harness) -> None:
    out = await run_probe(harness, {"features": ["taskclusterProxy"]})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'feature "taskclusterProxy", which needs run data "proxy" from the executor' in out.log
    assert "TASKCLUSTER_PROXY_URL is unset" not in out.log
    assert "proxy status" not in out.log


def test_features_never_look_at_an_executor_name_or_payload() -> None:
    """megalodon-features' code names no executor and reads no payload model: executor-name string
    literals, ``run.payload`` / ``.facts`` and ``Feature.executors`` lists are absent (docstrings aside)."""
    import ast

    import megalodon_features

    offences: list[str] = []
    for path in sorted(Path(megalodon_features.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in ("native", "docker"):
                offences.append(f"{where}: executor name {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in ("payload", "facts", "executors"):
                offences.append(f"{where}: .{node.attr}")
    assert offences == []
