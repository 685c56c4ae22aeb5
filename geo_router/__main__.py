"""Run the router: python -m geo_router SPEC."""

from __future__ import annotations

import argparse
import logging
import sys

from geo_router.live.server import serve_router
from meridian_core.spec import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geo_router", description="Meridian geo router")
    parser.add_argument("spec", help="platform spec (YAML)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per proxied request
    serve_router(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
