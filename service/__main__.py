"""``python -m service --bundle DIR [--host --port]``: serve a bundle with uvicorn (``service.server``).

Every option falls back to its ``SIDREC_*`` environment variable (see ``service.settings``). A bundle
that fails verification is refused with one clear line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from service.app import create_app
from service.errors import BundleError
from service.manifest import load_manifest
from service.server import Server
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", help="bundle directory (default: $SIDREC_BUNDLE_PATH)")
    parser.add_argument("--host", help="bind address (default: $SIDREC_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $SIDREC_PORT or 8000)")
    parser.add_argument(
        "--redis-url", help="redis://host:port/db (default: $SIDREC_REDIS_URL; empty = in-process)"
    )
    args = parser.parse_args(argv)
    overrides = {
        "bundle_path": args.bundle,
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SIDREC_" + "_".join(str(p) for p in first["loc"]).upper()
        print(f"error: {name}: {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        load_manifest(settings.bundle_path, verify=True)  # refuse early, with one line, before uvicorn starts
    except BundleError as exc:
        print(f"error: refusing to serve: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(
        {k for k in os.environ if k.startswith("SIDREC_")}
        - {f"SIDREC_{n.upper()}" for n in Settings.model_fields}
    )
    if unknown:  # a retired or misspelt setting would otherwise be ignored without a word
        logging.getLogger("sidrec.service").warning("ignoring unknown settings: %s", ", ".join(unknown))
    if settings.spool_dir is not None:
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
            (settings.spool_dir / ".writable").touch()
        except OSError as exc:
            print(f"error: SIDREC_SPOOL_DIR: cannot write to {settings.spool_dir} ({exc})", file=sys.stderr)
            return 2
    Server(create_app(settings), settings).run()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
