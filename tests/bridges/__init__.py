"""Behaviour tests of the business bridges against real peers on loopback."""
