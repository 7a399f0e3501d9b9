"""Run the demo backend standalone: ``python -m blossom_dash.demo_backend --port 8765``."""

from __future__ import annotations

import argparse

from aiohttp import web

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted.

    Args:
        argv: Command-line arguments without the program name (``None``: ``sys.argv``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m blossom_dash.demo_backend",
        description="Offline, synthetic stand-in for gen.pollinations.ai (demo-* models).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free)")
    parser.add_argument(
        "--no-latency", action="store_true", help="answer at once (for benchmarks)"
    )
    parser.add_argument(
        "--faults", action="store_true",
        help="enable fault injection (/_demo/faults, X-Demo-Fault, fault-* models); for tests only",
    )
    args = parser.parse_args(argv)
    latency = "off" if args.no_latency else "on"
    faults = ", fault injection ON" if args.faults else ""
    print(f"blossom-dash demo backend (synthetic answers), latency simulation {latency}{faults}")
    web.run_app(
        create_app(latency=not args.no_latency, faults=args.faults),
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
