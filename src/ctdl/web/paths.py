"""Path confinement: every path the web API accepts is a (root, relative path) pair inside a configured root.

The roots are the runs folder (``runs``) and the data folders (``data0``, ``data1``, ...). A relative path
with ``..`` parts, an absolute path, or one whose resolved target (symlinks followed) leaves its root is
refused with :class:`PathRefused` (answered as HTTP 403). Written by hand because the check must follow
symlinks and name the root in its message; ``Path.resolve`` + ``is_relative_to`` do the work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PathRefused(Exception):
    """A path outside the configured roots (or malformed)."""


@dataclass(frozen=True)
class Roots:
    """The folders the server may read: ``runs`` plus ``data0..N``."""

    runs: Path
    data: tuple[Path, ...]

    def mapping(self) -> dict[str, Path]:
        out = {"runs": self.runs}
        out.update({f"data{i}": d for i, d in enumerate(self.data)})
        return out

    def describe(self) -> list[dict[str, str]]:
        return [{"root": k, "path": str(v)} for k, v in self.mapping().items()]

    def get(self, root: str) -> Path:
        roots = self.mapping()
        if root not in roots:
            raise PathRefused(f"unknown root {root!r}; expected one of {', '.join(roots)}")
        return roots[root]

    def resolve(self, root: str, rel: str | None) -> Path:
        """The real path of ``rel`` inside ``root``; refuse anything that leaves it."""
        base = self.get(root).resolve()
        rel = (rel or "").replace("\\", "/")
        if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
            raise PathRefused(f"{rel!r}: absolute paths are refused; give a path relative to root {root!r}")
        parts = PurePosixPath(rel).parts
        if ".." in parts:
            raise PathRefused(f"{rel!r}: '..' is refused; paths must stay inside root {root!r} ({base})")
        target = (base / rel).resolve()
        if not target.is_relative_to(base):
            raise PathRefused(f"{rel!r}: resolves to {target}, outside root {root!r} ({base}) (symlink?)")
        return target

    def locate(self, path: Path) -> tuple[str, str] | None:
        """(root, relative path) of an absolute path inside a root, or None."""
        real = path.resolve()
        for name, base in self.mapping().items():
            b = base.resolve()
            if real.is_relative_to(b):
                return name, real.relative_to(b).as_posix()
        return None


def is_volume_name(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def sanitize_name(name: str, default: str = "file") -> str:
    """A safe single file name: no folders, only [A-Za-z0-9._-], no leading dots."""
    name = PurePosixPath(name.replace("\\", "/")).name
    name = _SAFE_NAME.sub("_", name).lstrip(".")
    return name[:120] or default
