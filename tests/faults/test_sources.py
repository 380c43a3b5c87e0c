"""Sources and downloaders that die or freeze mid-transfer: a) kill -9 a source, b) kill -STOP one, h) restart.

One module-wide swarm: two trackers and three sources capped at 20 MB/s, each holding the same 256 MiB file, so
a download lasts several seconds on loopback. Every scenario brings its own downloader and leaves the sources
running again afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults.harness import MiB, Watch, log_time, peer_ids, shrink, status, tracker_view
from faults.report import Check, Report
from helpers.cli import put, shoal_json
from helpers.files import make_file, sha256_of
from helpers.polling import wait_until
from helpers.processes import start_peers, start_trackers

from shoal.config import TlsFiles
from shoal.localswarm import LocalSwarm, Proc, wait_serving
from shoal.peer.superseed import ACTIVE_SECONDS

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.faults

SIZE = 256 * MiB
CHUNK = 1 * MiB
UPLOAD_LIMIT = 20_000_000  # bytes/s per source: three of them give about 60 MB/s


@dataclass
class BigSwarm:
    """The shared swarm and the file its sources hold."""

    swarm: LocalSwarm
    sources: list[Proc]
    file_id: str
    sha256: str
    workdir: Path
    baseline_seconds: float = 0.0
    last_download: float = 0.0  # monotonic end of the previous scenario's download

    def quiet(self) -> None:
        """Wait until the sources no longer count the previous downloader as active.

        Super-seeding counts a downloader as active for ACTIVE_SECONDS after its last request and throttles
        everyone while two are active (see test_back_to_back_downloads_keep_full_speed); each scenario here
        measures one fault, so it starts once that shadow has passed.
        """
        wait = self.last_download + ACTIVE_SECONDS + 0.5 - time.monotonic()
        if self.last_download and wait > 0:
            time.sleep(wait)

    def dismiss(self, *peers: Proc, best_effort: bool = False) -> None:
        """A scenario's peers are done: note when (for quiet()), stop them, free their disk and the outputs."""
        self.last_download = time.monotonic()
        for peer in peers:
            with contextlib.suppress(Exception) if best_effort else contextlib.nullcontext():
                self.swarm.stop_proc(peer)
            if peer.data_dir is not None:
                shrink(peer.data_dir)
        shrink(self.workdir / "out")

    def restore(self) -> None:
        """Bring every source back (SIGCONT, restart if dead) and wait until every tracker lists all three."""
        for source in self.sources:
            self.swarm.signal(source, signal.SIGCONT)
            if not source.alive():
                self.swarm.restart(source, wait=False)
        for source in self.sources:
            wait_serving(source.probe_address, timeout=60)
        wanted = peer_ids(self.sources)
        for tracker in self.swarm.trackers:

            def listed(address: str = tracker.address) -> bool:
                view = tracker_view(address, self.swarm.tls)
                return view is not None and wanted <= set(view.peer_ids)

            wait_until(listed, timeout=30, what=f"{tracker.name} to list the sources again")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles | None) -> Iterator[BigSwarm]:
    """Two trackers and three capped sources with one 256 MiB file; torn down whatever happens."""
    workdir = tmp_path_factory.mktemp("sources")
    swarm = LocalSwarm(workdir, tls=tls_files)
    try:
        start_trackers(swarm, 2)
        sources = start_peers(swarm, 3, "--upload-limit", str(UPLOAD_LIMIT), "--chunk-size", str(CHUNK))
        blob = workdir / "blob.bin"
        sha = make_file(blob, SIZE)
        file_id = ""
        for source in sources:
            file_id = put(swarm, source, blob)
        blob.unlink()
        shared = BigSwarm(swarm, sources, file_id, sha, workdir)
        shared.restore()
        yield shared
    finally:
        swarm.stop()
        shrink(workdir)


def _output(big: BigSwarm, name: str) -> Path:
    out = big.workdir / "out"
    out.mkdir(exist_ok=True)
    return out / name


@pytest.fixture
def baseline(big: BigSwarm) -> float:
    """Seconds for a clean download from all three sources (measured once per module)."""
    if big.baseline_seconds:
        return big.baseline_seconds
    big.quiet()
    peer = start_peers(big.swarm, 1)[0]
    try:
        output = _output(big, "baseline.bin")
        watch = Watch(peer, big.file_id, output).start().wait(300)
        assert watch.done, f"baseline download failed: {watch.error}"
        big.baseline_seconds = watch.seconds
    finally:
        big.dismiss(peer)
    return big.baseline_seconds


@pytest.fixture
def downloader(big: BigSwarm, baseline: float) -> Iterator[Proc]:
    """A fresh peer to download with (after the baseline); stopped, its copy deleted, sources restored afterwards."""
    big.quiet()
    peer = start_peers(big.swarm, 1)[0]
    try:
        yield peer
    finally:
        big.dismiss(peer)
        big.restore()


def _wait_for_share(watch: Watch, share: float) -> float:
    """Block until the download reached `share` of SIZE; return the share actually reached."""
    wait_until(
        lambda: watch.done_bytes() >= SIZE * share or watch.finished, timeout=120, what=f"{share:.0%} of the download"
    )
    return watch.done_bytes() / SIZE


def test_a_kill9_one_of_three_sources(big: BigSwarm, downloader: Proc, baseline: float, report: Report) -> None:
    output = _output(big, "a.bin")
    watch = Watch(downloader, big.file_id, output).start()
    at = _wait_for_share(watch, 0.25)
    victim = big.sources[0]
    big.swarm.signal(victim, signal.SIGKILL)
    victim.popen.wait(10)
    watch.wait(300)
    verified = watch.done and sha256_of(output) == big.sha256
    peers = watch.final.sources.peers if watch.final is not None else 0
    report.add(
        "a) kill -9 1 of 3 sources mid-download (256 MiB, sources capped 20 MB/s)",
        "download completes and verifies",
        f"{'completed, sha256 ok' if verified else 'FAILED ' + watch.error}; killed at {at:.0%}; "
        f"{watch.seconds:.1f} s vs {baseline:.1f} s clean; data from {peers} peers",
        [
            Check(watch.done, f"download failed after a source died: {watch.error}"),
            Check(verified, "downloaded file does not match"),
        ],
    )


def test_b_stop_one_source(big: BigSwarm, downloader: Proc, baseline: float, report: Report) -> None:
    output = _output(big, "b.bin")
    watch = Watch(downloader, big.file_id, output).start()
    at = _wait_for_share(watch, 0.2)
    victim = big.sources[1]
    stopped_wall, stopped = time.time(), time.monotonic()
    big.swarm.signal(victim, signal.SIGSTOP)
    try:
        watch.wait(300)
    finally:
        big.swarm.signal(victim, signal.SIGCONT)
    verified = watch.done and sha256_of(output) == big.sha256
    # The downloader drops the source after repeated failures or when it stalls past its pace, whichever first.
    marks = [log_time(downloader.log_path, f"source {victim.address} {why}") for why in ("failing", "sent nothing")]
    switched = min((m for m in marks if m is not None), default=None)
    switch = f"{switched - stopped_wall:.1f} s" if switched is not None else "never (finished first)"
    stall = watch.longest_stall(stopped)
    before = watch.rate(stopped - 1.0, stopped)
    frozen = watch.rate(stopped, stopped + (switched - stopped_wall if switched is not None else 3.0))
    report.add(
        "b) kill -STOP 1 of 3 sources mid-download (256 MiB, capped 20 MB/s)",
        "download completes; report the switch time",
        f"{'completed, sha256 ok' if verified else 'FAILED ' + watch.error}; stopped at {at:.0%}; "
        f"source dropped {switch} after STOP; {before / 1e6:.0f} MB/s before, {frozen / 1e6:.0f} MB/s until then; "
        f"longest progress stall {stall:.1f} s; "
        f"{watch.seconds:.1f} s vs {baseline:.1f} s clean (+{watch.seconds - baseline:.1f} s)",
        [
            Check(watch.done, f"download failed while a source was frozen: {watch.error}"),
            Check(verified, "downloaded file does not match"),
        ],
    )


def test_b_only_holder_paused_is_kept(big: BigSwarm, report: Report) -> None:
    # A pause longer than the stall rule (5 s at this pace) but shorter than a request's deadline: with
    # nobody to switch to, dropping the only holder would only add a cool-off.
    size, pause = 24 * MiB, 7.0
    big.quiet()
    holder, peer = start_peers(big.swarm, 2, "--upload-limit", "4000000")
    try:
        blob = big.workdir / "only.bin"
        sha = make_file(blob, size)
        file_id = put(big.swarm, holder, blob)
        blob.unlink()
        output = _output(big, "only.bin")
        watch = Watch(peer, file_id, output).start()
        wait_until(
            lambda: watch.done_bytes() >= size * 0.25 or watch.finished, timeout=60, what="a quarter of the download"
        )
        big.swarm.signal(holder, signal.SIGSTOP)
        time.sleep(pause)
        big.swarm.signal(holder, signal.SIGCONT)
        watch.wait(120)
        verified = watch.done and sha256_of(output) == sha
        dropped = log_time(peer.log_path, f"source {holder.address} sent nothing") is not None
        report.add(
            f"b) kill -STOP the only holder for {pause:.0f} s (24 MiB, capped 4 MB/s), then CONT",
            "download completes; the only holder is not dropped as stalled",
            f"{'completed, sha256 ok' if verified else 'FAILED ' + watch.error}; "
            f"{'dropped as stalled' if dropped else 'kept'}; {watch.seconds:.1f} s",
            [
                Check(watch.done, f"download failed while the only holder was paused: {watch.error}"),
                Check(verified, "downloaded file does not match"),
                Check(not dropped, "the only holder was dropped as stalled"),
            ],
        )
    finally:
        big.swarm.signal(holder, signal.SIGCONT)
        big.dismiss(peer, holder, best_effort=True)


def _chunks_on_disk(peer: Proc, file_id: str) -> int:
    """Verified chunks recorded in the partial download's on-disk bitfield."""
    assert peer.data_dir is not None
    have = (peer.data_dir / "partial" / file_id / "have").read_bytes()
    return sum(bin(byte).count("1") for byte in have)


def test_h_restart_downloader_resumes(big: BigSwarm, report: Report) -> None:
    # Capped well below what the sources give (about 60 MB/s): the second half then lasts about 9 s, room enough for
    # the restart and a `get` that joins the resumed download on a loaded machine (at 30 MB/s it was about 4.5 s).
    big.quiet()
    peer = start_peers(big.swarm, 1, "--download-limit", "15000000")[0]
    try:
        recorded = _output(big, "h.bin")
        watch = Watch(peer, big.file_id, recorded).start()
        at = _wait_for_share(watch, 0.5)
        big.swarm.signal(peer, signal.SIGKILL)
        peer.popen.wait(10)
        watch.wait(30)
        on_disk = _chunks_on_disk(peer, big.file_id)
        big.swarm.restart(peer)
        joined = _output(big, "h-joined.bin")
        final = shoal_json(big.swarm, peer, "get", big.file_id, "-o", str(joined), timeout=300)
        resumed = int(final["sources"]["resumed_chunks"])
        downloaded = status(peer).downloaded_bytes
        expected = SIZE - on_disk * CHUNK
        wait_until(recorded.exists, timeout=30, what="the resumed download's export to the recorded output path")
        verified = sha256_of(recorded) == big.sha256 and sha256_of(joined) == big.sha256
        report.add(
            "h) kill -9 the downloader at half, restart it (256 MiB)",
            "resumes at startup, fetches only missing chunks, exports to the recorded path",
            f"killed at {at:.0%} with {on_disk}/{SIZE // CHUNK} chunks on disk; after restart resumed_chunks="
            f"{resumed}, downloaded {downloaded / MiB:.0f} MiB (missing: {expected / MiB:.0f} MiB); "
            f"export {'ok' if verified else 'BAD'}",
            [
                Check(0 < on_disk < SIZE // CHUNK, "the kill did not land mid-download"),
                Check(resumed == on_disk, "restarted download did not start from the chunks on disk"),
                Check(downloaded == expected, "restarted peer fetched more (or less) than the missing chunks"),
                Check(verified, "exported file does not match"),
            ],
        )
    finally:
        big.dismiss(peer, best_effort=True)


def test_back_to_back_downloads_keep_full_speed(big: BigSwarm, report: Report) -> None:
    seconds = []
    big.quiet()
    for run in ("first", "second"):  # the second starts right after the first downloader left
        peer = start_peers(big.swarm, 1)[0]
        try:
            watch = Watch(peer, big.file_id, _output(big, f"{run}.bin")).start().wait(300)
            assert watch.done, f"{run} download failed: {watch.error}"
            seconds.append(watch.seconds)
        finally:
            big.dismiss(peer)
    first, second = seconds
    report.add(
        "super-seeding: a download starting right after another downloader left (256 MiB, 3 sources)",
        "as fast as the first (no fault injected)",
        f"{second:.1f} s vs {first:.1f} s for the first (x{second / first:.1f})",
        [Check(second <= 1.5 * first + 1.0, f"second download took {second:.1f}s, first {first:.1f}s")],
    )
