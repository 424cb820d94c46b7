"""The relay fixtures (a real app on loopback, a fake business) for the fuzz suite."""

from tests.relay.conftest import business, fake, make_relay

__all__ = ["business", "fake", "make_relay"]
