"""Trio: the only code that touches sockets. Listeners (server.py) and sessions (session.py)."""
