"""taskcluster-proxy: task calls signed with the task's credentials, limited to its scopes, refreshed on reclaim,
secrets read through it masked in the log, and the proxy gone once the task is."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import mohawk.bewit
import pytest
import taskcluster
import taskcluster.aio

from megalodon_core.config import parse_config
from megalodon_core.double import TaskclusterDouble
from megalodon_core.errors import InternalError
from megalodon_core.plugins import PluginHost
from megalodon_core.rundata import ProxyPlacement
from megalodon_core.task import TaskRun
from megalodon_core.tasklog import TaskLog
from megalodon_core.testing import Harness, make_task
from megalodon_core.timefmt import iso, utcnow
from megalodon_core.worker_context import WorkerContext
from megalodon_features.proxy import (
    ProxyError,
    TaskclusterProxy,
    TaskclusterProxyFeature,
    TaskclusterProxyTask,
    route,
    secret_strings,
)
from megalodon_native.proxy_interface import docker_bridge_gateway

SECRET_VALUE = "sup3r-s3cret-value"
TASK_SCOPES = ["secrets:get:project/mine", "auth:current-scopes", "queue:get-artifact:public/*"]

#: The task's side: plain http.client calls to $TASKCLUSTER_PROXY_URL, one line printed per result.
TASK_SCRIPT = textwrap.dedent(
    """
    import http.client, json, os, sys, time, urllib.parse
    proxy = urllib.parse.urlparse(os.environ["TASKCLUSTER_PROXY_URL"])
    print("proxy-url", os.environ["TASKCLUSTER_PROXY_URL"])

    def call(method, path, body=None, host=None, port=None):
        conn = http.client.HTTPConnection(host or proxy.hostname, port or proxy.port, timeout=30)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        out = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, out

    tid, run = os.environ["TASK_ID"], os.environ["RUN_ID"]
    status, headers, body = call("GET", "/secrets/v1/secret/project%2Fmine")
    print("secret-status", status)
    print("secret-value", json.loads(body)["secret"]["nested"]["token"])
    print("first-client", headers["x-taskcluster-proxy-temp-clientid"])
    status, _, _ = call("GET", "/api/secrets/v1/secret/project%2Fother")
    print("other-secret-status", status)
    expires = os.environ["ART_EXPIRES"]
    status, _, body = call(
        "POST",
        f"/queue/v1/task/{tid}/runs/{run}/artifacts/public%2Fproxied.txt",
        {"storageType": "s3", "contentType": "text/plain", "expires": expires, "contentLength": 6},
    )
    print("create-artifact-status", status)
    put = urllib.parse.urlparse(json.loads(body)["putUrl"])
    status, _, _ = call("PUT", put.path + ("?" + put.query if put.query else ""), b"hello\\n", put.hostname, put.port)
    print("put-status", status)
    status, headers, _ = call("GET", f"/api/queue/v1/task/{tid}/runs/{run}/artifacts/public%2Fproxied.txt")
    print("get-artifact-status", status, "location" in headers)
    status, _, body = call("GET", "/auth/v1/scopes/current")
    print("scopes", status, json.dumps(json.loads(body)["scopes"]))
    status, _, body = call("PUT", "/queue/v1/task/" + os.environ["OTHER_TASK_ID"], json.loads(os.environ["OTHER_TASK"]))
    print("create-task-status", status, json.loads(body).get("code"))
    status, _, _ = call("GET", "/nosuchservice.example.com/v1/x")
    print("foreign-host-status", status)
    time.sleep(float(os.environ.get("SLEEP", "0")))
    status, headers, _ = call("GET", "/auth/v1/scopes/current")
    print("last-client", status, headers["x-taskcluster-proxy-temp-clientid"])
    """
)


def task_env(harness: Harness, sleep: float = 0) -> dict[str, str]:
    other = make_task({"command": [["true"]], "maxRunTime": 10}, "elsewhere")
    return {
        "ART_EXPIRES": iso(utcnow() + dt.timedelta(hours=2)),
        "OTHER_TASK_ID": taskcluster.slugId(),
        "OTHER_TASK": json.dumps(other),
        "SLEEP": str(sleep),
    }


def lines(log: str, key: str) -> list[str]:
    return [line[len(key) + 1 :] for line in log.splitlines() if line.startswith(key + " ")]


async def put_secret(double: TaskclusterDouble, name: str, value: Any) -> None:
    async with aiohttp.ClientSession() as session:
        secrets = taskcluster.aio.Secrets(
            {"rootUrl": double.root_url, "credentials": double.root_credentials}, session=session
        )
        await secrets.set(name, {"secret": value, "expires": iso(utcnow() + dt.timedelta(days=1))})


def record_identities(double: TaskclusterDouble) -> list[tuple[str | None, str]]:
    """Wrap the double's authenticator: every authenticated request's (clientId, url), in order."""
    seen: list[tuple[str | None, str]] = []
    original = double.auth.authenticate

    def authenticate(header: str | None, url: str, method: str, content: bytes, content_type: str) -> Any:
        identity = original(header, url, method, content, content_type)
        seen.append((identity.client_id, url))
        return identity

    double.auth.authenticate = authenticate  # type: ignore[method-assign]
    return seen


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


async def test_native_task_uses_the_proxy_within_its_scopes_and_secrets_are_masked(harness: Harness) -> None:
    await put_secret(harness.double, "project/mine", {"nested": {"token": SECRET_VALUE, "short": "abc"}})
    await put_secret(harness.double, "project/other", {"x": "not-for-this-task"})
    payload = {
        "command": [[sys.executable, "-c", TASK_SCRIPT]],
        "maxRunTime": 60,
        "features": {"taskclusterProxy": True},
        "env": task_env(harness),
    }
    out = await harness.run(payload, task={"scopes": TASK_SCOPES}, taskclusterProxyPort=0)
    assert out.state == "completed", out.log
    log = out.log
    assert lines(log, "secret-status") == ["200"]
    # The secret the task printed is masked; short strings are not secrets worth shredding the log for.
    assert lines(log, "secret-value") == ["[REDACTED]"]
    assert SECRET_VALUE not in log
    # Outside the task's scopes: 403 from the service, not a proxy error.
    assert lines(log, "other-secret-status") == ["403"]
    assert lines(log, "create-task-status") == ["403 InsufficientScopes"]
    assert lines(log, "create-artifact-status") == ["200"]
    assert lines(log, "put-status") == ["200"]
    data, meta = harness.double.artifact_content(out.task_id, 0, "public/proxied.txt")
    assert (data, meta["storageType"]) == (b"hello\n", "s3")
    # Redirects come back to the task instead of being followed.
    assert lines(log, "get-artifact-status") == ["303 True"]
    scopes = json.loads(lines(log, "scopes")[0].split(" ", 1)[1])
    # plus assume:anonymous, which the auth service adds to every request's scopes (after authorizedScopes)
    assert sorted(scopes) == sorted([*TASK_SCOPES, "assume:anonymous", f"queue:create-artifact:{out.task_id}/0"])
    assert lines(log, "foreign-host-status") == ["404"]
    client = lines(log, "first-client")[0]
    assert client.startswith(f"task-client/{out.task_id}/0/on/")
    # The proxy is gone with the task.
    assert port_is_closed(lines(log, "proxy-url")[0])


async def test_credentials_are_refreshed_after_reclaims(tmp_path: Path) -> None:
    async with (
        TaskclusterDouble(claim_timeout=2.0, claim_work_wait=1.0, resolver_interval=0.2) as double,
        aiohttp.ClientSession() as session,
    ):
        harness = Harness(double, tmp_path, session)
        await put_secret(double, "project/mine", {"nested": {"token": SECRET_VALUE}})
        seen = record_identities(double)
        payload = {
            "command": [[sys.executable, "-c", TASK_SCRIPT]],
            "maxRunTime": 60,
            "features": {"taskclusterProxy": True},
            "env": task_env(harness, sleep=3.5),
        }
        out = await harness.run(payload, task={"scopes": TASK_SCOPES}, taskclusterProxyPort=0)
    assert out.state == "completed", out.log
    assert double.calls["reclaimTask"] >= 2
    first = lines(out.log, "first-client")[0]
    status, last = lines(out.log, "last-client")[0].split(" ")
    assert status == "200"
    assert last != first and last.startswith(f"task-client/{out.task_id}/0/on/")
    assert f"[taskcluster-proxy] Successfully refreshed taskcluster-proxy credentials: {last}" in out.log
    # The queue saw the last currentScopes call signed with the refreshed client, not the claim's.
    scope_calls = [client for client, url in seen if url.endswith("/api/auth/v1/scopes/current")]
    assert scope_calls[0] == first
    assert scope_calls[-1] == last


# -- unit level ----------------------------------------------------------------------------------------------
@pytest.fixture
async def ctx(harness: Harness) -> AsyncIterator[WorkerContext]:
    config = parse_config(harness.config("unit"), PluginHost().config_fields())
    async with aiohttp.ClientSession() as session:
        yield WorkerContext(config, PluginHost(load_entry_points=False), session, config.credentials)


def make_run(
    ctx: WorkerContext, double: TaskclusterDouble, tmp_path: Path, proxy: ProxyPlacement | None = None
) -> TaskRun:
    task_id = taskcluster.slugId()
    now = utcnow()
    creds = double.temporary_credentials(
        ["auth:current-scopes", f"queue:create-artifact:{task_id}/0", "secrets:get:a"],
        now,
        now + dt.timedelta(minutes=5),
        name=f"task-client/{task_id}/0/first",
    )
    run = TaskRun(
        task_id=task_id,
        run_id=0,
        task=make_task({}, "unit", scopes=["auth:current-scopes"]),
        worker=ctx,
        credentials=creds,
        taken_until=now + dt.timedelta(minutes=5),
        task_dir=tmp_path,
        log=TaskLog(tmp_path / "log"),
    )
    run.data.proxy = proxy
    return run


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_docker_tasks_get_the_proxy_on_their_network_gateway(
    ctx: WorkerContext, double: TaskclusterDouble, tmp_path: Path
) -> None:
    """The docker executor's placement: an address of the run's own in, a listener on exactly gateway:80 and
    the placement's ``http://taskcluster`` out; a reclaim switches the signing client; stop closes the port."""
    feature = TaskclusterProxyFeature(ctx)
    placement = ProxyPlacement("127.0.0.2", 80, exact_port=True, url="http://taskcluster")
    run = make_run(ctx, double, tmp_path, proxy=placement)
    task = feature.new_task_feature(run)
    assert isinstance(task, TaskclusterProxyTask)
    assert task.required_scopes() == []
    await task.start()
    try:
        assert run.data.env["TASKCLUSTER_PROXY_URL"] == "http://taskcluster"
        status, headers, body = await get("http://127.0.0.2:80/auth/v1/scopes/current")
        assert status == 200, body
        # plus the anonymous role, which the auth service adds to every request (after authorizedScopes)
        assert json.loads(body)["scopes"] == [
            "assume:anonymous",
            "auth:current-scopes",
            f"queue:create-artifact:{run.task_id}/0",
            "queue:get-artifact:public/*",
        ]
        assert headers["X-Taskcluster-Proxy-Temp-ClientId"] == f"task-client/{run.task_id}/0/first"
        assert headers["X-Taskcluster-Endpoint"] == f"{double.root_url}/api/auth/v1/scopes/current"
        now = utcnow()
        fresh = double.temporary_credentials(
            ["auth:current-scopes", f"queue:create-artifact:{run.task_id}/0"],
            now,
            now + dt.timedelta(minutes=5),
            name="second",
        )
        seen = record_identities(double)
        run.update_credentials(fresh, now + dt.timedelta(minutes=5))
        status, headers, _ = await get("http://127.0.0.2:80/api/auth/v1/scopes/current")
        assert status == 200
        assert headers["X-Taskcluster-Proxy-Temp-ClientId"] == "second"
        assert seen[-1][0] == "second"
    finally:
        await task.stop(run.errors)
        await feature.shutdown()
    assert port_is_closed("http://127.0.0.2:80")
    run.log.close()
    assert "Successfully refreshed taskcluster-proxy credentials: second" in run.log.path.read_text()


async def test_task_without_a_placement_is_a_clear_internal_error(
    ctx: WorkerContext, double: TaskclusterDouble, tmp_path: Path
) -> None:
    """Started directly (the pipeline refuses such a task before, see tests/core/test_contract.py)."""
    feature = TaskclusterProxyFeature(ctx)
    assert feature.needs == ("proxy",)
    run = make_run(ctx, double, tmp_path)
    with pytest.raises(InternalError, match=r"run\.data\.proxy"):
        await feature.new_task_feature(run).start()


def free_consecutive_ports(count: int) -> int:
    """A port such that it and the ``count - 1`` above it are all free now (each one bound and released):
    the port after a kernel-assigned one is often in use on a busy machine."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


async def test_ports_from_the_base_never_clash(ctx: WorkerContext, double: TaskclusterDouble, tmp_path: Path) -> None:
    base = free_consecutive_ports(3)
    feature = TaskclusterProxyFeature(ctx)

    def proxy() -> TaskclusterProxy:
        return TaskclusterProxy(double.root_url, double.root_credentials, [], feature.session())

    first, second, third = proxy(), proxy(), proxy()
    await feature.bind(first, "127.0.0.1", base)
    await feature.bind(second, "127.0.0.1", base)
    assert (first.port, second.port) == (base, base + 1)
    await first.close()
    feature.release("127.0.0.1", first.port)
    # A foreign listener on the base port: skipped.
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("127.0.0.1", base))
        foreign.listen()
        await feature.bind(third, "127.0.0.1", base)
        assert third.port == base + 2
    await second.close()
    await third.close()
    await feature.shutdown()


async def test_bewit_credentials_endpoint_and_routes(double: TaskclusterDouble) -> None:
    async with aiohttp.ClientSession() as session:
        proxy = TaskclusterProxy(double.root_url, double.root_credentials, ["a:b"], session)
        await proxy.listen("127.0.0.1", 0)
        base = f"http://127.0.0.1:{proxy.port}"
        try:
            target = f"{double.root_url}/api/queue/v1/task/abc/artifacts/private%2Fx?a=1"
            async with session.post(f"{base}/bewit", data=target.encode(), allow_redirects=False) as resp:
                assert resp.status == 303
                signed = resp.headers["Location"]
            assert signed.startswith(target + "&bewit=")
            creds = double.root_credentials
            assert mohawk.bewit.check_bewit(
                signed, lambda cid: {"id": cid, "key": creds["accessToken"], "algorithm": "sha256"}
            )
            async with session.post(f"{base}/bewit", data=b"https://evil.example.com/x") as resp:
                assert resp.status == 400
            async with session.put(f"{base}/credentials", json={"clientId": "x", "accessToken": "y"}) as resp:
                assert resp.status == 403
        finally:
            await proxy.close()


def test_routes_as_taskcluster_proxy() -> None:
    root = "https://tc.example.com/"
    assert route("/queue/v1/task/abc?x=1", root) == (
        "https://tc.example.com/api/queue/v1/task/abc?x=1",
        "queue",
        "v1",
        "task/abc",
    )
    assert route("/api/secrets/v1/secret/a%2Fb", root)[0] == "https://tc.example.com/api/secrets/v1/secret/a%2Fb"
    for bad in ("/api/queue", "/bad_service!/v1/x", "/evil.example.com/v1/x"):
        with pytest.raises(ProxyError) as err:
            route(bad, root)
        assert err.value.status == 404


def test_every_string_of_a_secret_is_found() -> None:
    found = set(secret_strings({"a": ["x1", {"b": 'quo"te'}], "n": 5, "c": "plain"}))
    assert found == {"x1", 'quo"te', 'quo\\"te', "plain"}
    assert list(secret_strings(None)) == []


async def test_disabled_by_config_is_refused(harness: Harness) -> None:
    payload = {"command": [["true"]], "maxRunTime": 30, "features": {"taskclusterProxy": True}}
    out = await harness.run(payload, enableTaskclusterProxy=False)
    assert (out.state, out.reason) == ("exception", "malformed-payload")
    assert "it's not enabled on this worker pool" in out.log


async def test_native_docker_bridge_interface_listens_on_the_bridge_gateway(harness: Harness) -> None:
    """``taskclusterProxyInterface: docker-bridge``: as generic-worker (v106+), the proxy is on the gateway
    of a Docker network of the run's own, which the task learns from ``TASKCLUSTER_DOCKER_NETWORK`` and
    ``TASKCLUSTER_PROXY_GATEWAY`` (needs the Docker engine, like every docker test)."""
    default_gateway = await docker_bridge_gateway()
    script = (
        "import os, urllib.request; url = os.environ['TASKCLUSTER_PROXY_URL']; print('url', url); "
        "print('network', os.environ['TASKCLUSTER_DOCKER_NETWORK']); "
        "print('gateway', os.environ['TASKCLUSTER_PROXY_GATEWAY']); "
        "print('status', urllib.request.urlopen(url + '/auth/v1/scopes/current').status)"
    )
    payload = {
        "command": [[sys.executable, "-c", script]],
        "maxRunTime": 30,
        "features": {"taskclusterProxy": True},
        "taskclusterProxyInterface": "docker-bridge",
    }
    out = await harness.run(payload, task={"scopes": ["auth:current-scopes"]}, taskclusterProxyPort=0)
    assert out.state == "completed", out.log
    (gateway,) = lines(out.log, "gateway")
    assert gateway != default_gateway  # not docker's shared default bridge
    assert lines(out.log, "url")[0].startswith(f"http://{gateway}:")
    assert lines(out.log, "network") == [f"gw-task-{out.task_id[:12]}-0"]
    assert lines(out.log, "status") == ["200"]
