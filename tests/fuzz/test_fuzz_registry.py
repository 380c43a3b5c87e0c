"""Fuzz the tracker registry as a state machine: only RegistryError subtypes, caps and invariants always hold."""

from __future__ import annotations

from helpers.clocks import FakeClock
from helpers.registry_audit import audit
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shoal.tracker.registry import Holding, Limits, NotOwner, Peer, Registry, RegistryError

IDS = [f"p{n}" for n in range(8)]
ADDRESSES = [f"10.0.0.{n}:1" for n in range(6)]
FILES = [f"{n:064x}" for n in range(10)]
holdings = st.lists(
    st.builds(
        Holding,
        st.sampled_from(FILES),
        st.sampled_from(["a", "b", "B", "évé"]),
        st.integers(min_value=0, max_value=3),
        st.booleans(),
    ),
    max_size=8,
)


class RegistryMachine(RuleBasedStateMachine):
    """Random announces, leaves, expiries and clock moves against small caps."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.registry = Registry(5.0, clock=self.clock, limits=Limits(max_peers=5, max_files=7, max_holdings=12))
        self.secrets: dict[str, str] = {}  # what each honest id was bound to

    @rule(
        peer_id=st.sampled_from(IDS),
        address=st.sampled_from(ADDRESSES),
        held=holdings,
        accepts=st.booleans(),
        forge=st.booleans(),
    )
    def announce(self, peer_id: str, address: str, held: list[Holding], accepts: bool, forge: bool) -> None:
        secret = "forged-secret-000000000" if forge else self.secrets.get(peer_id, "")
        try:
            joined, bound = self.registry.announce_as(Peer(peer_id, address), held, secret, accepts)
        except NotOwner:
            assert forge or not self.secrets.get(peer_id), "the honest peer was refused"
            return
        except RegistryError:
            return
        if joined or bound:
            self.secrets[peer_id] = bound

    @rule(peer_id=st.sampled_from(IDS), forge=st.booleans())
    def leave(self, peer_id: str, forge: bool) -> None:
        secret = "forged" if forge else self.secrets.get(peer_id, "")
        try:
            self.registry.leave_as(peer_id, secret)
        except NotOwner:
            assert forge
            return
        self.secrets.pop(peer_id, None)

    @rule(seconds=st.floats(min_value=0, max_value=6))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        self.registry.expire()

    @invariant()
    def consistent(self) -> None:
        audit(self.registry)


RegistryMachine.TestCase.settings = settings(settings.default, stateful_step_count=25)
TestRegistryMachine = RegistryMachine.TestCase
