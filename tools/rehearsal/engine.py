"""The Docker engine through its CLI: start it, run and probe containers, and clean up by label."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
LABEL = "shoal.rehearsal"  # every container, network and volume the rehearsal makes carries it

# Run inside a container (the image's venv has grpcio): what the kubelet's native gRPC probe asks.
PROBE = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, service, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
with grpc.insecure_channel(target) as channel:
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as err:
        print(err.code().name)
"""

# Run inside a container: GET a URL the way Prometheus scrapes a pod, print status then body.
SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
    print(reply.status)
    sys.stdout.write(reply.read().decode())
"""

# Run inside a container: what a name resolves to through the pod's DNS.
RESOLVE = """
import socket, sys
print(" ".join(sorted({info[4][0] for info in socket.getaddrinfo(sys.argv[1], None, socket.AF_INET)})))
"""


class EngineError(Exception):
    """A docker command failed."""


def docker(*args: str, check: bool = True, timeout: float = 300, input_text: str | None = None) -> str:
    """Run one docker CLI command and return its stdout; raise EngineError with stderr on failure."""
    cmd = ["docker", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text)
    except subprocess.TimeoutExpired as err:
        raise EngineError(f"{' '.join(cmd[:4])}... timed out after {timeout:.0f}s") from err
    if check and done.returncode != 0:
        raise EngineError(f"{' '.join(cmd[:6])}... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def start_engine() -> bool:
    """Install and start dockerd if needed (tools/docker-engine.sh); True when it was not running before."""
    was_up = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(ROOT / "tools" / "docker-engine.sh"), "start"], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"the Docker engine did not start:\n{done.stdout}{done.stderr}")
    return not was_up


def stop_engine() -> None:
    """Stop a dockerd that tools/docker-engine.sh started."""
    subprocess.run(["bash", str(ROOT / "tools" / "docker-engine.sh"), "stop"], check=False)


def build_image(tag: str, base_image: str = "") -> float:
    """tools/build-image.sh; returns its wall time in seconds."""
    started = time.monotonic()
    env_args = [f"IMAGE={tag}"] + ([f"BASE_IMAGE={base_image}"] if base_image else [])
    done = subprocess.run(
        ["env", *env_args, "bash", str(ROOT / "tools" / "build-image.sh")], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise EngineError(f"image build failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    logger.info("%s", done.stdout.strip())
    return time.monotonic() - started


def image_size(tag: str) -> int:
    """The image's size in bytes, as `docker images` reports it."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).strip())


def exec_in(container: str, *cmd: str, check: bool = True, timeout: float = 120) -> str:
    """`docker exec` (like `kubectl exec`): runs as the container's user, with its env."""
    return docker("exec", container, *cmd, check=check, timeout=timeout)


def probe(container: str, target: str, service: str, timeout: float) -> str:
    """A gRPC health check from inside `container` to target: SERVING, NOT_SERVING, or a status code name."""
    out = docker(
        "exec", container, "python3", "-c", PROBE, target, service, str(timeout), check=False, timeout=timeout + 10
    )
    return out.strip() or "NO_ANSWER"


def scrape(container: str, url: str) -> tuple[int, str]:
    """HTTP GET from inside `container`; (status, body)."""
    out = docker("exec", container, "python3", "-c", SCRAPE, url, timeout=30)
    status, _, body = out.partition("\n")
    return int(status), body


def resolve(container: str, name: str) -> list[str]:
    """The IPv4 addresses a name resolves to inside `container`."""
    return docker("exec", container, "python3", "-c", RESOLVE, name, timeout=30).split()


def timed_stop(container: str, grace: int) -> float:
    """`docker stop` (SIGTERM, SIGKILL after grace); returns the seconds it took."""
    started = time.monotonic()
    docker("stop", "--time", str(grace), container, timeout=grace + 30)
    return time.monotonic() - started


def logs(container: str, tail: int = 40) -> str:
    """The container's last log lines (stdout and stderr)."""
    done = subprocess.run(["docker", "logs", "--tail", str(tail), container], capture_output=True, text=True)
    return done.stdout + done.stderr


def remove_labelled(value: str | None = None) -> None:
    """Remove containers, volumes and networks carrying the rehearsal label (this run's, or any)."""
    selector = f"label={LABEL}" + (f"={value}" if value else "")
    containers = docker("ps", "-aq", "--filter", selector, check=False).split()
    if containers:
        docker("rm", "-f", "-v", *containers, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", selector, check=False).split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)
    networks = docker("network", "ls", "-q", "--filter", selector, check=False).split()
    for network in networks:
        docker("network", "rm", network, check=False)


def remove_images(tags: Sequence[str]) -> None:
    """Remove the images built for the rehearsal, and the build stages they left dangling."""
    for tag in tags:
        docker("image", "rm", "-f", tag, check=False)
    docker("image", "prune", "-f", "--filter", "label=shoal.stage=build", check=False)
