"""Calling the `shoal` client against a peer's control socket, as a user would: blocking, background or async."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.polling import wait_until
from shoal.localswarm import LocalSwarm, Proc

logger = logging.getLogger(__name__)

CLI_TIMEOUT = 120.0


def command(peer: Proc, *args: str) -> list[str]:
    """The argv of `shoal --peer <peer's control socket> ARGS`."""
    return [sys.executable, "-m", "shoal.cli", "--peer", peer.control, *args]


def shoal(swarm: LocalSwarm, peer: Proc, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one client command against `peer`; never raises on a non-zero exit."""
    return swarm.cli(peer, *args, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a command succeeded and return its stdout."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def shoal_json(swarm: LocalSwarm, peer: Proc, *args: str, timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
    """Run `shoal --json ARGS` against `peer`, assert it succeeded, and return its parsed output."""
    out = ok(shoal(swarm, peer, "--json", *args, timeout=timeout))
    # `get --json` streams one object per progress message and ends with the summary; the others print one document.
    data = json.loads(out.splitlines()[-1] if args and args[0] == "get" else out)
    assert isinstance(data, dict), data
    return data


def put(swarm: LocalSwarm, peer: Proc, path: Path, *extra: str) -> str:
    """Publish `path` on `peer` (extra flags such as --chunk-size); return the file id."""
    return str(shoal_json(swarm, peer, "put", str(path), *extra)["file"]["file_id"])


def wait_listed(swarm: LocalSwarm, asker: Proc, file_id: str) -> None:
    """Poll `shoal peers` on `asker` until the trackers list a holder of `file_id` (put announces in the background)."""
    wait_until(lambda: shoal(swarm, asker, "peers", file_id).returncode == 0, what=f"{file_id[:12]} listed")


def start_get(peer: Proc, file_id: str, output: Path) -> subprocess.Popen[str]:
    """`shoal --json get` in the background; the caller communicates with it and kills it if left running."""
    return subprocess.Popen(
        command(peer, "--json", "get", file_id, "--output", str(output)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def shoal_async(peer: Proc, *args: str, timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
    """Run a client command without blocking the event loop (a test serving gRPC on it); (exit code, out, err)."""
    proc = await asyncio.create_subprocess_exec(
        *command(peer, *args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
