"""Invariants of a tracker Registry, checked from its inside after every step of a fuzz run or a test."""

from __future__ import annotations

from shoal.tracker.registry import Registry


def audit(reg: Registry) -> None:
    """Raise AssertionError unless the registry's indexes agree, its caps hold and nothing lapsed is listed."""
    limits = reg.limits
    leases = reg._leases
    files = reg._files.entries
    assert len(leases) <= limits.max_peers, "more leases than max_peers"
    assert len(files) <= limits.max_files, "more files than max_files"
    assert reg._holdings <= limits.max_holdings, "more holdings than max_holdings"
    assert (
        reg._holdings
        == sum(len(lease.holdings) for lease in leases.values())
        == sum(len(entry.holders) for entry in files.values())
    ), "holding count out of step"
    for peer_id, lease in leases.items():
        assert lease.peer.peer_id == peer_id
        assert reg._by_address.get(lease.peer.address) == peer_id, "a lease's address is not indexed to it"
        for file_id, holding in lease.holdings.items():
            assert files[file_id].holders[peer_id] == holding, "lease and file index disagree"
    for address, peer_id in reg._by_address.items():
        assert leases[peer_id].peer.address == address, "address index points at a peer elsewhere"
    for file_id, entry in files.items():
        assert entry.holders, "a file without holders is kept"
        reports = [(h.name, h.size) for h in entry.holders.values()]
        assert sum(entry.votes.values()) == len(reports)
        best = max(reports.count(r) for r in reports)
        expected = next(r for r in reports if reports.count(r) == best)  # holders are kept oldest first
        assert (entry.meta.file_id, entry.meta.name, entry.meta.size) == (file_id, *expected), "name not elected"
        assert entry.folded_name == entry.meta.name.casefold()
    now = reg._clock()
    live = {peer_id for peer_id, lease in leases.items() if lease.expires_at > now}
    assert {p.peer_id for p in reg.live_peers()} == live
    for hit in reg.search("", 1000):
        holders = reg.holders(hit.file.file_id, 1000)
        assert holders and {h.peer.peer_id for h in holders} <= live, "a listing without a live lease"
        assert hit.complete_holders + hit.partial_holders == len(holders)
    stats = reg.stats()
    assert stats.peers == len(live) <= limits.max_peers
    assert stats.files <= limits.max_files
