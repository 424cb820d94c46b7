"""The one registry of this node's devices (relay/cluster/directory.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.cluster.base import Presence
from relay.cluster.directory import DeviceDirectory


@dataclass(eq=False)
class Dev:
    """A connected device as the directory sees it."""

    device_id: str
    session_id: str
    closed_with: list[int] = field(default_factory=list)

    def presence(self, node: str) -> Presence:
        return Presence(self.device_id, node, self.session_id, 1.0, 2.0)

    def request_close(self, code: int) -> None:
        self.closed_with.append(code)


def test_a_newer_connection_replaces_the_older_and_only_the_current_one_is_removed() -> None:
    d: DeviceDirectory[Dev] = DeviceDirectory()
    old, new = Dev("A", "s1"), Dev("A", "s2")
    assert d.add(old) is None
    assert d.add(new) is old
    assert d.get("A") is new
    assert len(d) == 1
    assert not d.remove(old)  # the replaced connection ends later: it must not unregister
    assert d.get("A") is new
    assert d.remove(new)
    assert d.get("A") is None
    assert len(d) == 0


def test_holds_compares_the_session() -> None:
    d: DeviceDirectory[Dev] = DeviceDirectory()
    d.add(Dev("A", "s1"))
    assert d.holds("A", "s1")
    assert not d.holds("A", "s2")
    assert not d.holds("B", "s1")


def test_presences_and_iteration_see_every_device_and_survive_removal() -> None:
    d: DeviceDirectory[Dev] = DeviceDirectory()
    devs = [Dev(f"D{i}", f"s{i}") for i in range(3)]
    for dev in devs:
        d.add(dev)
    assert [p.device_id for p in d.presences("n1")] == ["D0", "D1", "D2"]
    assert {p.node for p in d.presences("n1")} == {"n1"}
    for dev in d:  # closing while iterating, as a drain does
        d.remove(dev)
    assert len(d) == 0
