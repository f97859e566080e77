"""The one implementation of archive-member safety that native, docker and features use."""

from __future__ import annotations

import pytest

from megalodon_core.archive_safety import ABSOLUTE, ESCAPES, UnsafeMember, link_escapes, member_parts


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ("a", "b")), ("./a//b/", ("a", "b")), ("a/../b", ("b",)), ("a\\b", ("a", "b")), ("", ())],
)
def test_member_parts_inside(name: str, parts: tuple[str, ...]) -> None:
    assert member_parts(name) == parts


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", ABSOLUTE),
        ("C:\\x", ABSOLUTE),
        ("../x", ESCAPES),
        ("a/../../x", ESCAPES),
        ("a\\..\\..\\x", ESCAPES),
    ],
)
def test_member_parts_refuses_escaping_names(name: str, reason: str) -> None:
    with pytest.raises(UnsafeMember) as info:
        member_parts(name)
    assert info.value.reason == reason


def test_strict_posix_mode_for_container_and_image_tars() -> None:
    with pytest.raises(UnsafeMember):
        member_parts("a/../b", collapse=False)
    # In a Linux container a backslash and a colon are ordinary name characters.
    assert member_parts("top/a\\b", windows_names=False) == ("top", "a\\b")
    assert member_parts("C:x", windows_names=False) == ("C:x",)


def test_link_targets() -> None:
    assert not link_escapes("d/link", "../file", symbolic=True)
    assert link_escapes("d/link", "../../file", symbolic=True)
    assert link_escapes("link", "/etc/passwd", symbolic=True)
    assert not link_escapes("d/hard", "d/file", symbolic=False)  # hard links resolve from the root
    assert link_escapes("d/hard", "../file", symbolic=False)
