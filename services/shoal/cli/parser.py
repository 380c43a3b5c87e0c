"""The argparse tree, built from config's declarations: every flag shows its default and its SHOAL_* variable."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from shoal import config
from shoal.settings import SWITCH_ON

logger = logging.getLogger(__name__)

# What shtab writes for a path argument (shtab.FILE / shtab.DIRECTORY), without importing shtab to parse.
FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}
PATH_SETTINGS = {"data_dir": DIRECTORY, "tls_cert": FILE, "tls_key": FILE, "tls_ca": FILE}

DESCRIPTION = "Peer-to-peer file distribution over gRPC."
EPILOG = """\
examples:
  shoal peer --tracker tracker:7400 --data-dir /var/lib/shoal
  export SHOAL_PEER=unix:/var/lib/shoal/control.sock
  shoal put ./model.bin               # prints the file id last
  shoal get ID -o /models/            # writes /models/<name>
  shoal completion bash > /etc/bash_completion.d/shoal

exit codes: 0 ok, 1 failed, 2 usage, 3 cannot reach the daemon, 4 not found, 130 interrupted"""

COMMANDS: dict[str, tuple[str, str]] = {
    "tracker": ("run a tracker", "shoal tracker --listen 0.0.0.0:7400 --announce-interval 3s"),
    "peer": (
        "run a peer daemon",
        "shoal peer --tracker t1:7400,t2:7400 --data-dir /var/lib/shoal --upload-limit 50MB/s",
    ),
    "put": (
        "publish a file; prints its id last",
        "shoal put ./model.bin --name model-v2.bin --chunk-size 4MiB\n  shoal put --move /data/model.bin",
    ),
    "get": (
        "download a file by id, or an origin URL through the swarm",
        "shoal get ID -o ./model.bin\n  shoal get ID -o /models/ --overwrite\n  shoal --json get ID -o out.bin | jq .\n"
        "  shoal get https://models.example/m.bin -o /models/ --header @/etc/shoal/headers\n"
        "  shoal get s3://bucket/m.bin -o m.bin --s3-endpoint http://minio:9000 --digest sha256:HEX",
    ),
    "preheat": (
        "import origin URLs into the swarm ahead of time; returns when every one is held",
        "shoal preheat https://models.example/m.bin oci://registry:5000/team/model@sha256:HEX",
    ),
    "search": ("find files by name", "shoal search model"),
    "peers": ("live peers holding a file", "shoal peers ID"),
    "ls": ("what this peer holds: size, pinned, last use and state", "shoal ls\n  shoal ls --json"),
    "rm": ("remove a file from this peer and withdraw it from the trackers", "shoal rm ID"),
    "cancel": ("stop a download and drop its partial data (it does not resume)", "shoal cancel ID"),
    "pin": ("keep a file from eviction by the cache quota", "shoal pin ID"),
    "unpin": ("let the cache quota evict a file again", "shoal unpin ID"),
    "status": ("this peer's id, address, trackers and bytes up/down", "shoal status"),
    "verify": ("re-hash a held file; exit 1 (and drop it) when it no longer matches", "shoal verify ID"),
    "demo": ("run a local swarm of real processes and check every copy", "shoal demo --peers 4 --size 256MiB"),
    "completion": (
        "print a shell completion script",
        "shoal completion bash > ~/.local/share/bash-completion/completions/shoal\n"
        "  shoal completion zsh > ~/.zfunc/_shoal",
    ),
}


class _Version(argparse.Action):
    """--version, read from the installed package only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("shoal")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"shoal {text}")
        parser.exit()


def help_text(setting: config.Setting) -> str:
    """The flag's help line: what it does, its default and its variable ('%' escaped for argparse)."""
    if setting.shown_default is not None:
        default = setting.shown_default
    elif setting.required:
        default = "required"
    elif setting.default is None or setting.default == "":
        default = "none"
    else:
        default = f"{setting.default:g}" if isinstance(setting.default, float) else str(setting.default)
    where = f"default: {default}" + (f"; env {setting.env_name}" if setting.env_name else "")
    return f"{setting.help} ({where})".replace("%", "%%")


def add_setting(parser: argparse.ArgumentParser, setting: config.Setting, *, default: Any = None) -> None:
    """One flag for one setting; its text is parsed later by config, so --help never depends on the environment."""
    if setting.switch:  # given without a value: stands for "true", parsed like the variable's text
        action = parser.add_argument(
            setting.flag, dest=setting.dest, action="store_const", const=SWITCH_ON, default=default,
            help=help_text(setting),
        )  # fmt: skip
    else:
        action = parser.add_argument(
            setting.flag, dest=setting.dest, default=default, metavar=setting.metavar, help=help_text(setting)
        )
    if setting.dest in PATH_SETTINGS:
        action.complete = PATH_SETTINGS[setting.dest]  # type: ignore[attr-defined]


def _sub(sub: Any, name: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A command's parser with its common flags, its settings and an example."""
    summary, example = COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=[common],
        help=summary,
        description=summary[:1].upper() + summary[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for setting in config.COMMANDS.get(name, ()):
        if setting not in config.GLOBAL:
            add_setting(parser, setting)
    return parser


HEADER_HELP = "request header for http(s) origins, repeatable; @FILE reads 'Name: value' lines (never logged)"


def _origin_flags(parser: argparse.ArgumentParser, *, digest: bool = True) -> None:
    """--header and --digest, for commands that take origin URLs."""
    parser.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'|@FILE", help=HEADER_HELP)
    if digest:
        parser.add_argument(
            "--digest", default="", metavar="sha256:HEX", help="the whole file must match this digest (URLs only)"
        )


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag; values stay text here, config.resolve reads and checks them."""
    parser = argparse.ArgumentParser(
        prog="shoal", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version)
    # Global flags go before or after the command; after it they win (SUPPRESS keeps the value given before).
    client, server = argparse.ArgumentParser(add_help=False), argparse.ArgumentParser(add_help=False)
    for setting in config.GLOBAL:
        add_setting(parser, setting)
        add_setting(client if setting is config.PEER else server, setting, default=argparse.SUPPRESS)
    for target, default in ((parser, False), (client, argparse.SUPPRESS)):
        target.add_argument("--json", action="store_true", default=default, help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("tracker", "peer"):
        _sub(sub, name, server)

    put = _sub(sub, "put", client)
    put.add_argument("path", metavar="PATH", help="the local file to publish").complete = FILE  # type: ignore[attr-defined]
    put.add_argument("--name", default=None, help="name to publish under (default: the file's base name)")
    put.add_argument(
        "--move", action="store_true", help="take the file in: rename it into the data dir (the path goes away)"
    )
    put.add_argument(
        "--copy",
        action="store_true",
        help="store an independent copy, never a hard link (your file stays writable)",
    )

    get = _sub(sub, "get", client)
    get.add_argument(
        "file_id",
        metavar="ID|URL",
        help="the file id, 64 hex characters, as `put` or `search` printed it; or an http(s)://, s3:// or oci:// URL",
    )
    _origin_flags(get)
    get.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="PATH",
        help="file to write; an existing directory, or a path ending in '/', gets DIR/<name>",
    ).complete = FILE  # type: ignore[attr-defined]
    get.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    get.epilog = (get.epilog or "") + "\n\nwith --json: one JSON object per progress message, the summary last"

    _sub(sub, "search", client).add_argument("term", metavar="TERM", help="case-insensitive part of the file name")
    peers = _sub(sub, "peers", client)
    peers.add_argument("file_id", metavar="ID|URL", help="the file id, 64 hex characters, or an origin URL")
    peers.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'|@FILE", help=HEADER_HELP)
    preheat = _sub(sub, "preheat", client)
    preheat.add_argument("urls", nargs="+", metavar="URL", help="http(s)://, s3:// or oci:// URLs to import")
    _origin_flags(preheat, digest=False)
    preheat.add_argument(
        "--replicas", type=int, default=1, metavar="N", help="peers that should hold each file, spread over zones"
    )
    _sub(sub, "ls", client)
    for verb in ("rm", "cancel", "pin", "unpin"):
        _sub(sub, verb, client).add_argument("file_id", metavar="ID", help="the file id, 64 hex characters")
    _sub(sub, "status", client)
    _sub(sub, "verify", client).add_argument("file_id", metavar="ID", help="the file id, 64 hex characters")

    demo = _sub(sub, "demo", argparse.ArgumentParser(add_help=False))
    demo.add_argument("--metrics", action="store_true", help="leave the swarm running with metrics ports printed")
    demo.add_argument("--workdir", default=None, metavar="DIR", help="keep files here instead of a temp dir")

    completion = _sub(sub, "completion", argparse.ArgumentParser(add_help=False))
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    return parser
