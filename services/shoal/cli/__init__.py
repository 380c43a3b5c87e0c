"""The `shoal` command: servers (tracker, peer), client commands over the control API, demo and completion.

Client commands import only what they use (grpc and the control API); the daemons, their metrics and the
Kubernetes client load only in the processes that run them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from shoal import config
from shoal.cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from shoal.cli.parser import build_parser

logger = logging.getLogger(__name__)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "main",
    "parse_args",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, then read every setting the command uses (flag, SHOAL_* variable, default).

    A variable is read only by a command that uses it, so a bad one breaks that command alone; a flag given
    explicitly is always checked. Raises config.ConfigError.
    """
    raw = vars(build_parser().parse_args(argv))
    used = config.COMMANDS.get(raw["command"], ())
    given = tuple(s for s in config.GLOBAL if s not in used and raw.get(s.dest) is not None)
    return argparse.Namespace(**{**raw, **config.resolve((*used, *given), raw)})


def _run_tracker(args: argparse.Namespace) -> int:
    import asyncio

    from shoal import logs
    from shoal.tracker.server import run_tracker

    logs.setup(args.log_level, args.log_format)
    asyncio.run(run_tracker(config.TrackerConfig.from_values(vars(args))))
    return 0


def _run_peer(args: argparse.Namespace) -> int:
    import asyncio

    from shoal import logs
    from shoal.memory import keep_large_buffers
    from shoal.peer.daemon import run_peer

    logs.setup(args.log_level, args.log_format)
    cfg = config.PeerConfig.from_values(vars(args))
    if not keep_large_buffers():
        logger.info("malloc not tuned (not glibc): chunk buffers are mapped afresh")
    from shoal.peer.access import AccessError

    os.umask(0o077)  # the data dir's files are the daemon's alone (a copied export is chmod 644 explicitly)
    try:
        asyncio.run(run_peer(cfg))
    except AccessError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from shoal import logs
    from shoal.demo import run_demo

    logs.setup("WARNING")
    return run_demo(args)


def _print_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        raise CliError("shell completion needs the shtab package (pip install shtab)", EXIT_FAILURE) from None
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _run_client(args: argparse.Namespace) -> int:
    import asyncio

    from shoal.cli.client import run

    return asyncio.run(run(args))


_RUNNERS = {"tracker": _run_tracker, "peer": _run_peer, "demo": _run_demo, "completion": _print_completion}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shoal` console script."""
    try:
        args = parse_args(argv)
        return _RUNNERS.get(args.command, _run_client)(args)
    except config.ConfigError as err:
        print(f"shoal: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as err:
        print(f"shoal: {err}", file=sys.stderr)
        return err.code
    except OSError as err:
        print(f"shoal: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
