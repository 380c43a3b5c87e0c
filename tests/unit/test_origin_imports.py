"""Origin imports without sockets: part files, names and keys, and preheat's spread over zones."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from pathlib import Path

import pytest

from shoal.peer.errors import Unreachable
from shoal.peer.parts import PartFile
from shoal.peer.preheat import pick_spread, spread
from shoal.peer.url_keys import claim_key, file_name
from shoal.v1 import common_pb2, tracker_pb2

logger = logging.getLogger(__name__)

CHUNK = 16


def test_part_file_resumes_after_whole_chunks_only(tmp_path: Path) -> None:
    data = bytes(range(40))
    part = PartFile(tmp_path / "k.part", len(data), CHUNK)
    assert part.open() == 0
    part.append(data[:16])
    assert part.read(0) == data[:16] and part.read(1) is None
    with pytest.raises(ValueError):
        part.append(data[16:20])  # not a whole chunk
    part.close()
    with (tmp_path / "k.part").open("ab") as f:
        f.write(data[16:20])  # a torn write of the next chunk
    again = PartFile(tmp_path / "k.part", len(data), CHUNK)
    assert again.open() == 16 and again.next_index == 1
    again.append(data[16:32])
    again.append(data[32:])  # the short last chunk
    assert again.done and again.read(2) == data[32:]
    assert again.digest.hexdigest() == hashlib.sha256(data).hexdigest()
    again.discard()
    assert not (tmp_path / "k.part").exists()


def test_names_and_claim_keys() -> None:
    assert file_name("https://h/models/llm.bin?x=1", "a" * 64) == "llm.bin"
    assert file_name("oci://r:5000/team/model@sha256:" + "0" * 64, "a" * 64) == "model"
    assert file_name("https://h/", "ab" * 32) == "origin-" + "ab" * 8
    key = "c" * 64
    assert claim_key(key) != key and len(claim_key(key)) == 64 and claim_key(key) == claim_key(key)


def peer(n: int, zone: str) -> common_pb2.PeerInfo:
    return common_pb2.PeerInfo(peer_id=f"p{n}", address=f"127.0.0.1:{7000 + n}", zone=zone)


def test_pick_spread_fills_the_emptiest_zone_first() -> None:
    candidates = [peer(1, "a"), peer(2, "a"), peer(3, "b"), peer(4, "c")]
    chosen = pick_spread(candidates, ["a"], 2, random.Random(1))
    assert sorted(p.zone for p in chosen) == ["b", "c"]
    assert len(pick_spread(candidates, [], 9, random.Random(1))) == 4


class FakeTrackers:
    def __init__(self, holders: list[common_pb2.PeerInfo], live: list[common_pb2.PeerInfo]) -> None:
        self._holders = holders
        self._live = live

    async def holders(self, file_id: str, limit: int = 0) -> list[tracker_pb2.Holder]:
        return [tracker_pb2.Holder(peer=p, complete=True) for p in self._holders]

    async def live_peers(self) -> list[common_pb2.PeerInfo]:
        return self._live


class FakeLink:
    def __init__(self, address: str, asked: list[str], failing: set[str]) -> None:
        self.address = address
        self.asked = asked
        self.failing = failing

    async def replicate_to(self, file_id: str, url_key: str, url: str, timeout: float) -> common_pb2.FileInfo:
        self.asked.append(self.address)
        if self.address in self.failing:
            raise Unreachable("UNAVAILABLE")
        return common_pb2.FileInfo(file_id=file_id)


class FakeLinks:
    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.asked: list[str] = []
        self.failing = set(failing)

    def link(self, address: str) -> FakeLink:
        return FakeLink(address, self.asked, self.failing)


def test_spread_asks_other_zones_and_reports_who_holds_it() -> None:
    me = peer(0, "a")
    live = [me, peer(1, "a"), peer(2, "b"), peer(3, "b"), peer(4, "c")]
    links = FakeLinks(failing=frozenset({peer(4, "c").address}))
    held = asyncio.run(spread(me, FakeTrackers([me], live), links, "f" * 64, "k" * 64, "u", 3, random.Random(2)))
    # zone a holds it here; b and c are asked; c fails, so two peers hold it.
    assert sorted(links.asked) == sorted([peer(4, "c").address, held[1].address])
    assert [p.zone for p in held] == ["a", "b"]
    already = asyncio.run(spread(me, FakeTrackers([me, peer(2, "b")], live), FakeLinks(), "f" * 64, "", "u", 2))
    assert [p.peer_id for p in already] == ["p0", "p2"]


def test_cli_reads_urls_headers_and_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal import cli
    from shoal.cli.client import check_locally

    monkeypatch.setenv("SHOAL_S3_ENDPOINT", "http://minio:9000")
    (tmp_path / "h").write_text("# comment\nAuthorization: Bearer x\n")
    args = cli.parse_args(
        ["get", "s3://b/k.bin", "-o", str(tmp_path / "o"), "-H", "X-A: 1", "-H", f"@{tmp_path / 'h'}"]
    )
    check_locally(args)
    assert (args.url, args.file_id, args.s3_endpoint) == ("s3://b/k.bin", "", "http://minio:9000")
    assert args.header_lines == ["X-A: 1", "# comment", "Authorization: Bearer x"]
    for bad in (["-H", "no colon"], ["--digest", "md5:00"], ["-H", "@/no/such/file"]):
        args = cli.parse_args(["get", "https://h/a", "-o", str(tmp_path / "o"), *bad])
        with pytest.raises(cli.CliError) as raised:
            check_locally(args)
        assert raised.value.code == cli.EXIT_USAGE
    args = cli.parse_args(["preheat", "https://h/a", "oci://r/x@sha256:" + "0" * 64, "--replicas", "3"])
    check_locally(args)
    assert args.replicas == 3 and args.url == ""
    with pytest.raises(cli.CliError):
        check_locally(cli.parse_args(["preheat", "/local/path"]))
    ids = cli.parse_args(["get", "a" * 64, "-o", str(tmp_path / "o")])
    check_locally(ids)
    assert (ids.url, ids.file_id) == ("", "a" * 64)
