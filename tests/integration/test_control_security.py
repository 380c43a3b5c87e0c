"""A hostile local user against a real peer's control API: no token, no ticket, paths it may not touch.

The second local user is `nobody`, run with runuser and the system Python (the test's own interpreter may
live where nobody cannot reach); these tests need root and are skipped without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers.files import make_file

import shoal as shoal_pkg
from shoal.localswarm import LocalSwarm, free_port
from shoal.v1 import control_pb2, control_pb2_grpc

NOBODY = 65534
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON.exists(), reason="needs root and runuser")


def shoal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", *args]


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the system Python as `nobody`, with this checkout and the venv's packages on its path."""
    path = f"{sysconfig.get_paths()['purelib']}:{Path(shoal_pkg.__file__).parent.parent}"
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={path}", "HOME=/tmp", str(SYSTEM_PYTHON), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every local user can enter (pytest's tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="shoal-ctl-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def token_file(directory: Path, mode: int = 0o600, token: str = "s3cret-token-value") -> Path:
    path = directory / "token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


def as_root(socket_path: Path, *args: str) -> str:
    """The daemon's own user through the group socket: the CLI, asserting success."""
    result = subprocess.run(shoal_cmd("--peer", f"unix:{socket_path}", *args), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tcp_control_needs_its_token(swarm: LocalSwarm, tmp_path: Path) -> None:
    token = token_file(tmp_path)
    control = f"127.0.0.1:{free_port()}"
    peer = swarm.start_peer("--control", control, "--control-token-file", str(token))
    secret = tmp_path / "root-only"
    secret.write_bytes(b"root secret\n")
    os.chmod(secret, 0o600)

    def call(method: str, request: object, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
        with grpc.insecure_channel(control) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            try:
                result = getattr(stub, method)(request, metadata=metadata, timeout=10)
                if method == "Get":
                    list(result)
            except grpc.RpcError as err:
                return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    put = control_pb2.PutRequest(path=str(secret))
    assert call("Put", put) == grpc.StatusCode.UNAUTHENTICATED
    assert call("Put", put, (("shoal-control-token", "guess"),)) == grpc.StatusCode.UNAUTHENTICATED
    assert call("List", control_pb2.ListRequest()) == grpc.StatusCode.UNAUTHENTICATED
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    get = control_pb2.GetRequest(file_id="a" * 64, output=str(victim))
    assert call("Get", get) == grpc.StatusCode.UNAUTHENTICATED
    assert victim.read_bytes() == b"keep me"

    # The CLI reads the same file and is let in; nothing was published by the refused calls.
    env_cmd = ["--peer", control]
    tokenless = subprocess.run(shoal_cmd(*env_cmd, "ls"), capture_output=True, text=True, timeout=60)
    assert tokenless.returncode == 1 and "--control-token-file" in tokenless.stderr
    listing = subprocess.run(
        shoal_cmd(*env_cmd, "ls", "--control-token-file", str(token)), capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[1:] == []  # the header only: nothing held
    # ... and still serves honest work afterwards.
    data = tmp_path / "honest.bin"
    make_file(data, 300_000)
    put_ok = subprocess.run(
        shoal_cmd(*env_cmd, "put", str(data), "--control-token-file", str(token)), capture_output=True, text=True
    )
    assert put_ok.returncode == 0, put_ok.stderr
    assert "s3cret-token-value" not in peer.log_path.read_text()  # never logged
    assert "missing or wrong token" in peer.log_path.read_text()


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_peer_refuses_a_readable_token_file_or_none(swarm: LocalSwarm, tmp_path: Path, mode: int) -> None:
    token = token_file(tmp_path, mode)
    control = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path / "d"
    base = ["peer", "--listen", f"127.0.0.1:{free_port()}", "--tracker", swarm.trackers[0].address]
    base += ["--data-dir", str(data_dir), "--control", control]
    refused = subprocess.run(shoal_cmd(*base, "--control-token-file", str(token)), capture_output=True, text=True)
    assert refused.returncode == 2
    assert "readable by others" in refused.stderr and "Traceback" not in refused.stderr
    missing = subprocess.run(shoal_cmd(*base), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "--control-token-file" in missing.stderr and "Traceback" not in missing.stderr


@ROOT_ONLY
def test_group_member_may_touch_only_its_own_paths(swarm: LocalSwarm, shared_dir: Path) -> None:
    socket_path = shared_dir / "control.sock"
    peer = swarm.start_peer("--control", f"unix:{socket_path}", "--control-group", "nogroup")
    for path in (socket_path, shared_dir / "control.sock.cred"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)
        assert path.stat().st_gid == NOBODY
    target = ["-m", "shoal.cli", "--peer", f"unix:{socket_path}"]

    secret = shared_dir / "root-only.txt"
    secret.write_bytes(b"root secret\n")
    os.chmod(secret, 0o600)
    refused = as_nobody(*target, "put", str(secret))
    assert refused.returncode == 1, refused.stderr
    assert "permission denied" in refused.stderr and "Traceback" not in refused.stderr

    # Get over a file nobody may not write: refused before any byte moves; the file is intact.
    honest = shared_dir / "honest.bin"
    make_file(honest, 200_000)
    file_id = as_root(socket_path, "put", str(honest)).split()[-1]
    victim = shared_dir / "victim.conf"
    victim.write_bytes(b"root config\n")
    os.chmod(victim, 0o644)
    overwrite = as_nobody(*target, "get", file_id, "-o", str(victim), "--overwrite")
    assert overwrite.returncode == 1, overwrite.stderr
    assert "permission denied" in overwrite.stderr
    assert victim.read_bytes() == b"root config\n"

    # A raw client as nobody that skips the ticket is not let in at all.
    raw = textwrap.dedent(f"""
        import grpc
        from shoal.v1 import control_pb2, control_pb2_grpc
        with grpc.insecure_channel("unix:{socket_path}") as channel:
            try:
                control_pb2_grpc.ControlStub(channel).Put(control_pb2.PutRequest(path="{secret}"), timeout=10)
            except grpc.RpcError as err:
                print(err.code().name)
    """)
    assert as_nobody("-c", raw).stdout.strip() == "UNAUTHENTICATED"
    assert len(as_root(socket_path, "ls").splitlines()[1:]) == 1  # under the header: only the honest file

    # nobody may still publish its own file and download into its own directory.
    mine_dir = shared_dir / "nobody"
    mine_dir.mkdir()
    os.chown(mine_dir, NOBODY, NOBODY)
    mine = mine_dir / "mine.bin"
    make_file(mine, 100_000)
    os.chown(mine, NOBODY, NOBODY)
    published = as_nobody(*target, "put", str(mine))
    assert published.returncode == 0, published.stderr
    got = as_nobody(*target, "get", file_id, "-o", str(mine_dir / "copy.bin"))
    assert got.returncode == 0, got.stderr
    assert (mine_dir / "copy.bin").read_bytes() == honest.read_bytes()
    assert peer.alive()
