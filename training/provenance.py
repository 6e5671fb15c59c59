"""The command a stage actually ran, for the ``"command"`` of its ``metrics.json``.

``python -m training`` (``training.__main__.main``) records the arguments of each invocation while it
runs. A pipeline (and the demo) runs every stage through ``main`` with the stage's own arguments, so a
stage always records the command that reproduces it on its own, never the pipeline's argv (which is
what ``sys.argv`` holds there); ``training.pipeline`` then adds the pipeline's command to each stage's
``metrics.json`` as ``"pipeline_command"``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["command", "invocation", "outermost_command"]

_RUNNING: list[list[str]] = []  # argv of each ``python -m training`` invocation in progress, outermost first


@contextmanager
def invocation(argv: Sequence[str]) -> Iterator[None]:
    """While a ``python -m training`` command with these arguments runs."""
    _RUNNING.append(list(argv))
    try:
        yield
    finally:
        _RUNNING.pop()


def _render(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "training", *argv])


def command() -> str:
    """The innermost command running, e.g. ``python -m training generator --data D --ids I --out O``.

    Called outside ``python -m training`` (a stage's ``run`` imported and called from Python), it is
    the process's own command line: still what actually ran.
    """
    if _RUNNING:
        return _render(_RUNNING[-1])
    return shlex.join(["python", *sys.argv])


def outermost_command() -> str:
    """The command that started everything, e.g. the pipeline or the demo that ran this stage."""
    if _RUNNING:
        return _render(_RUNNING[0])
    return shlex.join(["python", *sys.argv])
