"""Print the pip requirements of chosen pyproject extras, one per line (used by the Dockerfile).

The image installs exactly what ``pyproject.toml`` declares, not a second hand-kept list, and never
the sidrec package itself (so the serving image holds ``service/`` and nothing of ``training/``).
``--onnxruntime onnxruntime-gpu`` swaps the CPU runtime for the CUDA one (which also runs on CPU).

    python deploy/docker/requirements.py pyproject.toml --extras serve --onnxruntime onnxruntime-gpu
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

#: ONNX Runtime distributions that can replace the ``onnxruntime`` requirement.
RUNTIMES = ("onnxruntime", "onnxruntime-gpu")


def requirements(pyproject: Path, extras: list[str], onnxruntime: str) -> list[str]:
    """Core dependencies plus each extra's, with the ONNX Runtime distribution swapped in."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra {unknown[0]!r} (have {sorted(optional)})")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += [req for req in optional[extra] if req not in lines]
    return [re.sub(r"^onnxruntime(?=[<>=!~ \[;]|$)", onnxruntime, req) for req in lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", default="serve", help="comma list of extras (default: %(default)s)")
    parser.add_argument("--onnxruntime", choices=RUNTIMES, default="onnxruntime")
    args = parser.parse_args(argv)
    extras = [extra for extra in args.extras.split(",") if extra]
    print("\n".join(requirements(args.pyproject, extras, args.onnxruntime)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
