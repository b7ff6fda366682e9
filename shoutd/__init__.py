"""shoutd: one Layer-2 network, multicast and broadcast included, for Docker containers on many hosts."""

__version__ = "0.5.0"
