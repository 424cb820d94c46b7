"""The one registry of this node's connected devices (`DeviceDirectory`): the device
endpoint adds and removes connections, the cluster layer reads their presence from it, and
pushes and replacements find a connection through it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from relay.cluster.base import Presence


class LocalDevice(Protocol):
    """What the directory needs of a connected device."""

    @property
    def device_id(self) -> str:
        """The canonical device id."""
        ...

    @property
    def session_id(self) -> str:
        """The connection's session id."""
        ...

    def presence(self, node: str) -> Presence:
        """What the cluster knows of the connection."""
        ...

    def request_close(self, code: int) -> None:
        """Close the connection with `code`, from any task."""
        ...


D = TypeVar("D", bound=LocalDevice)


class DeviceDirectory(Generic[D]):
    """This node's devices by id; a device's newer connection replaces its older one."""

    def __init__(self) -> None:
        self._by_id: dict[str, D] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[D]:
        return iter(list(self._by_id.values()))  # a copy: closing one may remove it

    def get(self, device_id: str) -> D | None:
        """The device's connection here, if any."""
        return self._by_id.get(device_id)

    def add(self, dev: D) -> D | None:
        """Register `dev`; returns the connection of the same device it replaces."""
        previous = self._by_id.get(dev.device_id)
        self._by_id[dev.device_id] = dev
        return previous

    def remove(self, dev: D) -> bool:
        """Forget `dev` if it is still its device's connection here."""
        if self._by_id.get(dev.device_id) is not dev:
            return False
        del self._by_id[dev.device_id]
        return True

    def holds(self, device_id: str, session_id: str) -> bool:
        """The device is connected here in that session."""
        dev = self._by_id.get(device_id)
        return dev is not None and dev.session_id == session_id

    def presences(self, node: str) -> list[Presence]:
        """Every device here, as the cluster records it."""
        return [dev.presence(node) for dev in self._by_id.values()]
