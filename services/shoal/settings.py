"""A setting's machinery: where its value comes from (flag, SHOAL_* variable, default), how it is parsed and checked."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import units

logger = logging.getLogger(__name__)


def env(name: str, default: str | None = None) -> str | None:
    """Read SHOAL_<NAME>, treating an empty value as unset."""
    value = os.environ.get(f"SHOAL_{name}")
    return value if value else default


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from (flag, then SHOAL_<env>, then default) and how it is read and checked."""

    dest: str
    flag: str
    help: str
    env: str | None = None
    default: Any = None
    parse: Callable[[str], Any] = str
    check: Callable[[Any], None] | None = None
    metavar: str | None = None
    required: bool = False
    fallback: Callable[[], Any] | None = None  # a default computed from other variables
    shown_default: str | None = None  # the default as --help writes it
    switch: bool = False  # a flag without a value (metavar ""), meaning SWITCH_ON; its variable takes `boolean` text

    @property
    def env_name(self) -> str | None:
        """The variable's full name, or None when the setting has none."""
        return f"SHOAL_{self.env}" if self.env else None

    def read(self, flag_value: str | None) -> Any:
        """The value from the flag, else the variable, else the default; ConfigError when wrong or missing."""
        if flag_value is not None:
            return self._convert(flag_value, f"{self.flag} {flag_value!r}")
        text = env(self.env) if self.env else None
        if text is not None:
            return self._convert(text, f"{self.env_name}={text!r}")
        value = self.fallback() if self.fallback is not None else self.default
        if value is None and self.required:
            raise ConfigError(self, f"{self.flag} {self.metavar or ''}".rstrip() + self._or_env() + " is required")
        return value

    def _convert(self, text: str, where: str) -> Any:
        try:
            value = self.parse(text)
            if self.check is not None:
                self.check(value)
        except ValueError as err:
            raise ConfigError(self, f"{where}: {err}") from None
        return value

    def _or_env(self) -> str:
        return f" (or {self.env_name})" if self.env_name else ""


class ConfigError(ValueError):
    """A setting's value is missing or wrong; carries the setting so callers never read the message."""

    def __init__(self, setting: Setting, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def integer(text: str) -> int:
    """An integer, said plainly when it is not one."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("not an integer") from None


SWITCH_ON = "true"  # what a switch's flag stands for when given
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def boolean(text: str) -> bool:
    """true/false, yes/no, on/off or 1/0, in any case."""
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"choose one of {', '.join(TRUE + FALSE)}")


def choice(options: tuple[str, ...], *, upper: bool) -> Callable[[str], str]:
    """A parser accepting one of `options`, case folded to upper or lower."""

    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in options:
            raise ValueError(f"choose one of {', '.join(options)}")
        return value

    return parse


def at_least(low: float) -> Callable[[float], None]:
    """A check refusing values below `low`."""

    def check(value: float) -> None:
        if value < low:
            raise ValueError(f"must be at least {low:g}")

    return check


def positive(value: float) -> None:
    """Refuse zero and below."""
    if value <= 0:
        raise ValueError("must be positive")


def port(value: int) -> None:
    """Refuse what is not a TCP port."""
    if not 0 <= value <= 65535:
        raise ValueError("not a port (0-65535)")


def address(value: str) -> None:
    """Refuse what is not host:port."""
    from shoal.net import split_host_port  # grpc comes with it: only the servers pay for it

    split_host_port(value)


def addresses(text: str) -> tuple[str, ...]:
    """A comma-separated list of host:port, at least one."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found:
        raise ValueError("no address given")
    for one in found:
        address(one)
    return found


def chunk_size(value: int) -> None:
    """Refuse a chunk size content.py does not accept."""
    from shoal import content

    content.check_chunk_size(value)


def chunk_size_or_zero(value: int) -> None:
    """A chunk size, or 0 for the daemon's own."""
    if value != 0:
        chunk_size(value)


def parse_cache_size(text: str) -> int | float:
    """--cache-size: bytes (int; 0 = no limit) or a share of the data dir's filesystem ('80%' -> 0.8)."""
    body = text.strip()
    if body.endswith("%"):
        try:
            percent = float(body[:-1].strip())
        except ValueError:
            raise ValueError("not a percentage (e.g. 80%)") from None
        if not 0 < percent <= 100:
            raise ValueError("a percentage must be above 0 and at most 100")
        return percent / 100.0
    return units.parse_size(body)


def absolute(text: str) -> Path:
    """A path made absolute against the current directory."""
    return Path(text).expanduser().absolute()


def bracketed(text: str) -> str:
    """host:port, with a bare IPv6 host (as $(POD_IP):7402 gives on IPv6 clusters) put in brackets."""
    host, sep, port = text.strip().rpartition(":")
    return f"[{host}]:{port}" if sep and ":" in host and not host.startswith("[") else text.strip()
