"""osGroups in the insecure engine: accepted only when the worker's user already has every group."""

from __future__ import annotations

import grp
import os

from megalodon_core.testing import Harness
from megalodon_features.os_groups import current_groups


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def foreign_group() -> str:
    """A group that exists on this host but that the worker process is not in."""
    mine = current_groups()
    return next(g.gr_name for g in grp.getgrall() if g.gr_name not in mine)


def test_current_groups_are_the_process_groups() -> None:
    groups = current_groups()
    assert own_group() in groups
    assert {grp.getgrgid(gid).gr_name for gid in os.getgroups()} <= groups


async def test_groups_the_worker_user_has_are_accepted(harness: Harness) -> None:
    out = await harness.run({"command": [sh("echo RAN-$((40+2))")], "maxRunTime": 30, "osGroups": [own_group()]})
    assert (out.state, out.reason) == ("completed", "completed"), out.log
    assert "RAN-42" in out.log


async def test_a_group_the_worker_user_lacks_is_malformed_payload(harness: Harness) -> None:
    lacking = foreign_group()
    payload = {"command": [sh("echo RAN-$((40+2))")], "maxRunTime": 30, "osGroups": [own_group(), lacking]}
    out = await harness.run(payload)
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    allowed = "[" + " ".join(sorted(current_groups())) + "]"
    assert f"[taskcluster:error] task payload contains unsupported osGroups: [{lacking}]\n" in out.log
    assert f"[taskcluster:error] allowed values (on this worker pool): {allowed}\n" in out.log
    assert "RAN-42" not in out.log, "the command ran although the payload was refused"


async def test_os_groups_refused_by_name_when_disabled(harness: Harness) -> None:
    payload = {"command": [sh("true")], "maxRunTime": 30, "osGroups": [own_group()]}
    out = await harness.run(payload, enableOSGroups=False)
    assert (out.state, out.reason) == ("exception", "malformed-payload"), out.log
    assert 'this task is attempting to use feature "osGroups", but it\'s not enabled on this worker pool' in out.log
    out = await harness.run({"command": [sh("true")], "maxRunTime": 30, "osGroups": []}, enableOSGroups=False)
    assert out.state == "completed", out.log
