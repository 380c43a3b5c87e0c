"""One nginx on loopback for benchmarks and tests: its own prefix, one worker, no master, and the caller's servers."""

from __future__ import annotations

from pathlib import Path

NGINX = "/usr/sbin/nginx"  # Debian's nginx-light

_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
"""


def configure(prefix: Path, http: str, *, connections: int = 64) -> Path:
    """Write prefix/nginx.conf: the fixed main part, then `http` (log formats and server blocks, already filled in)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_MAIN.format(prefix=prefix, connections=connections) + http + "}\n")
    return conf


def argv(prefix: Path, nginx: str = NGINX) -> list[str]:
    """The command that runs the nginx configured in `prefix` in the foreground."""
    return [nginx, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
