"""Tar (and zip) member safety: which member names and link targets stay inside the archive's root.

Archives reach the worker from tasks (mounts, artifacts copied out of containers, image tarballs), so a
crafted member name (``/etc/x``, ``../../x``, ``C:\\x``) or link target must never make the worker write,
or point, outside the directory the archive is unpacked or read into.  One implementation, used by every
plugin that reads archives.
"""

from __future__ import annotations

import posixpath

__all__ = ["UnsafeMember", "link_escapes", "member_parts"]

ABSOLUTE = "absolute paths are not allowed"
ESCAPES = "it escapes the target directory: zip slip"


class UnsafeMember(ValueError):
    """A member name that would land outside the archive root; ``reason`` says why (for error messages)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def member_parts(name: str, *, collapse: bool = True, windows_names: bool = True) -> tuple[str, ...]:
    """The member's path as components below the archive root.

    Absolute names (``/x``) are refused; so is a ``..`` that climbs above the root.  With ``collapse`` a
    ``..`` inside the root is resolved (``a/../b`` is ``b``), as extractors do; without it any ``..``
    component is refused.  With ``windows_names`` (archives from anywhere, e.g. zips made on Windows) a
    drive letter (``C:``) is absolute too and backslashes are separators; without it (a tar streamed out
    of a Linux container) they are ordinary name characters.  Raises :class:`UnsafeMember`.
    """
    if name.startswith("/") or (windows_names and len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise UnsafeMember(name, ABSOLUTE)
    parts: list[str] = []
    for part in (name.replace("\\", "/") if windows_names else name).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not collapse or not parts:
                raise UnsafeMember(name, ESCAPES)
            parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def link_escapes(name: str, target: str, *, symbolic: bool) -> bool:
    """Whether a link member's target resolves outside the archive root.

    A symbolic link's target is relative to the member's directory, a hard link's to the archive root; an
    absolute target always escapes (it names the host's file system, not the archive's).
    """
    if target.startswith("/"):
        return True
    base = posixpath.dirname(name) if symbolic else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    return resolved == ".." or resolved.startswith("../")
