"""The peer's tracker secrets: made once, kept 0600 in the data dir, shown to each replica, survive a restart."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from shoal.peer.credentials import FILE_NAME, MAX_ENTRIES, OWN, TrackerSecrets
from shoal.v1 import common_pb2, tracker_pb2


async def test_own_secret_is_made_once_and_kept_0600(tmp_path: Path) -> None:
    first = TrackerSecrets(tmp_path)
    request = tracker_pb2.AnnounceRequest(peer=common_pb2.PeerInfo(peer_id="p", address="h:1"))
    signed = await first.announcement(request, "10.0.0.1:7400")
    assert signed.accepts_secret and len(signed.peer_secret) >= 22
    assert request.peer_secret == ""  # the shared request is not touched
    path = tmp_path / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = TrackerSecrets(tmp_path)  # a restarted peer shows the same secret
    await again.load()
    assert again.get("10.0.0.2:7400") == signed.peer_secret
    assert again.leave_request("p", "10.0.0.1:7400").peer_secret == signed.peer_secret


async def test_a_replica_secret_is_remembered_per_replica(tmp_path: Path) -> None:
    secrets = TrackerSecrets(tmp_path)
    await secrets.remember("10.0.0.1:7400", "issued-by-one-" + "x" * 20)
    await secrets.remember("10.0.0.2:7400", "")  # an older tracker answers nothing: no change
    restarted = TrackerSecrets(tmp_path)
    await restarted.load()
    assert restarted.get("10.0.0.1:7400") == "issued-by-one-" + "x" * 20
    assert restarted.get("10.0.0.2:7400") == restarted.get(OWN)


async def test_entries_are_capped_and_bad_files_ignored(tmp_path: Path) -> None:
    secrets = TrackerSecrets(tmp_path)
    for n in range(MAX_ENTRIES + 10):
        await secrets.remember(f"10.0.{n // 256}.{n % 256}:7400", f"s{n:040d}")
    saved = json.loads((tmp_path / FILE_NAME).read_text())
    assert len(saved) == MAX_ENTRIES and OWN in saved
    (tmp_path / FILE_NAME).write_text("{not json")
    broken = TrackerSecrets(tmp_path)
    await broken.load()
    assert len(broken.get("any:1")) >= 22  # a new own secret: replicas bind new leases to it
    (tmp_path / FILE_NAME).write_text(json.dumps({OWN: ["not", "a", "string"], "a:1": "y" * 500}))
    odd = TrackerSecrets(tmp_path)
    await odd.load()
    assert odd.get("a:1") == odd.get(OWN) and isinstance(odd.get(OWN), str)
