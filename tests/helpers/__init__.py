"""Helpers shared by several test modules (test modules import from here, not from each other)."""
