"""Simulated users: the protocol, personas and the scripted user."""
