"""Certificate authorities and certificates for TLS tests, made with `cryptography` (no openssl CLI needed)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal import net, tls
from shoal.config import TlsFiles

if TYPE_CHECKING:
    import pytest

    from shoal.localswarm import LocalSwarm, Proc

logger = logging.getLogger(__name__)

# Set to 1 to run every test swarm (the `swarm` fixtures, the fault suite) with mutual TLS.
ENV = "SHOAL_TEST_TLS"

_DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Authority:
    """A CA that signs certificates for tests; its PEM is written to `ca_path`."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "shoal-test-ca") -> Authority:
        """A fresh self-signed CA, its certificate written to directory/<name>.pem."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .sign(key, hashes.SHA256())
        )
        ca_path = directory / f"{name}.pem"
        ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, ca_path)

    def issue(
        self,
        directory: Path,
        name: str,
        dns_names: tuple[str, ...] = (tls.TRACKER_NAME, tls.PEER_NAME),
        cn: str | None = None,
        ips: tuple[str, ...] = (),
    ) -> TlsFiles:
        """A certificate for client and server use with these DNS SANs (CN `cn`, else `name`), as <name>.{crt,key}."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(
                x509.SubjectAlternativeName(
                    [*(x509.DNSName(n) for n in dns_names), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        write_atomically(key_path, _pem_key(key))
        return TlsFiles(cert_path, key_path, self.ca_path)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace a file in one rename, as a Secret volume's update does, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def pem(files: TlsFiles) -> tuple[bytes, bytes, bytes]:
    """(cert, key, ca) as bytes, for a raw grpc client's credentials."""
    return files.cert.read_bytes(), files.key.read_bytes(), files.ca.read_bytes()


def tls_args(files: TlsFiles) -> list[str]:
    """The daemon flags for these files."""
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


def requested() -> bool:
    """True when SHOAL_TEST_TLS=1 asks for mutual TLS on every test swarm."""
    return os.environ.get(ENV) == "1"


def swarm_files(factory: pytest.TempPathFactory, wanted: bool = False) -> TlsFiles | None:
    """Certificates from a fresh CA when `wanted` or SHOAL_TEST_TLS=1, else None (the swarm runs plaintext)."""
    if not (wanted or requested()):
        return None
    directory = factory.mktemp("tls")
    return Authority.create(directory).issue(directory, "swarm")


ChannelOptions = Sequence[tuple[str, int | str]]


def channel_options(
    files: TlsFiles | None, server_name: str, extra: ChannelOptions = ()
) -> list[tuple[str, int | str]]:
    """Shoal's channel options (shoal.net), `extra` replacing options of the same name, and the name to expect."""
    replaced = {name for name, _ in extra}
    options = [(name, value) for name, value in net.CHANNEL_OPTIONS if name not in replaced]
    options += extra
    if files is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Our certificate presented, servers checked against the CA of `files`."""
    cert, key, ca = pem(files)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel(address: str, files: TlsFiles | None, server_name: str, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to a tracker or peer: mutual TLS with `files` expecting `server_name`, else plaintext."""
    opts = channel_options(files, server_name, options)
    if files is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, channel_credentials(files), options=opts)


def aio_channel(
    address: str, files: TlsFiles | None, server_name: str, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """channel() for asyncio code."""
    opts = channel_options(files, server_name, options)
    if files is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, channel_credentials(files), options=opts)


def role_name(swarm: LocalSwarm, proc: Proc) -> str:
    """The name a swarm member expects in `proc`'s certificate: TRACKER_NAME for its trackers, else PEER_NAME."""
    return tls.TRACKER_NAME if any(t is proc for t in swarm.trackers) else tls.PEER_NAME


def dial(swarm: LocalSwarm, proc: Proc, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to a tracker or peer of `swarm` as its members dial it (its TLS files, if any)."""
    return channel(proc.address, swarm.tls, role_name(swarm, proc), options)


def dial_aio(swarm: LocalSwarm, proc: Proc, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """dial() for asyncio code."""
    return aio_channel(proc.address, swarm.tls, role_name(swarm, proc), options)


@contextmanager
def raw_connection(address: str, files: TlsFiles | None, server_name: str) -> Iterator[socket.socket]:
    """A TCP connection for hand-written HTTP/2: inside TLS with our certificate (ALPN h2) when `files`, else bare."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        if files is None:
            yield sock
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=files.ca)
        context.load_cert_chain(files.cert, files.key)
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(sock, server_hostname=server_name) as wrapped:
            yield wrapped


def listen(server: grpc.aio.Server, files: TlsFiles | None) -> str:
    """Bind a server the test runs on 127.0.0.1 as a swarm member listens: mutual TLS with `files`, else plaintext.

    Returns its address."""
    return f"127.0.0.1:{tls.Transport(files).bind(server, '127.0.0.1:0')}"
