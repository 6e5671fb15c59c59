"""Read the Dockerfile's stages and what each one copies (no Docker engine needed)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from tests.deploy.conftest import REPO


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def context_copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of every COPY from the build context (not --from another stage)."""
        copies = []
        for args in self.all("COPY"):
            words = [word for word in shlex.split(args) if not word.startswith("--chown")]
            if any(word.startswith("--from") for word in words):
                continue
            copies.append((words[:-1], words[-1]))
        return copies


def stages() -> dict[str, Stage]:
    """Stages by name, instructions with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    logical, buffer = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buffer += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(buffer.strip())
            buffer = ""
    result: dict[str, Stage] = {}
    current = None
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            current = Stage(words[words.index("AS") + 1] if "AS" in words else str(len(result)))
            result[current.name] = current
        if current is not None:
            current.instructions.append((keyword.upper(), args))
    return result
