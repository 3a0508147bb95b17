"""Test doubles for external services (a fake Speechmatics real-time server)."""
