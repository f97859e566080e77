"""Loopback devices (native): generic-worker checks the feature's scope first and names it; this host then
refuses for want of the device, never silently."""

from __future__ import annotations

import pytest

from megalodon_core.testing import PROVISIONER, Harness


def errors(log: str) -> str:
    return "\n".join(line.removeprefix("[taskcluster:error] ") for line in log.splitlines())


@pytest.mark.parametrize(("flag", "kind"), [("loopbackVideo", "video"), ("loopbackAudio", "audio")])
async def test_a_missing_loopback_scope_is_named_as_generic_worker_names_it(
    harness: Harness, flag: str, kind: str
) -> None:
    payload = {"command": [["true"]], "maxRunTime": 30, "features": {flag: True}}
    pool = f"{PROVISIONER}/e2e-{harness.counter + 1}"
    out = await harness.run(payload)
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    text = errors(out.log)
    assert f'Feature "{flag}" requires scopes:\n\n  generic-worker:loopback-{kind}:{pool}\n\nOR\n\n' in text
    assert f"  generic-worker:loopback-{kind}\n\nbut task only has scopes:" in text
    assert "Executing command" not in out.log

    out = await harness.run(payload, task={"scopes": [f"generic-worker:loopback-{kind}"]})
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert f'feature "{flag}": this worker has no loopback {kind} device' in out.log
    assert "requires scopes" not in out.log


async def test_a_disabled_loopback_feature_is_refused_before_its_scope(harness: Harness) -> None:
    payload = {"command": [["true"]], "maxRunTime": 30, "features": {"loopbackVideo": True}}
    out = await harness.run(payload, enableLoopbackVideo=False)
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'this task is attempting to use feature "loopbackVideo", but it\'s not enabled' in out.log
