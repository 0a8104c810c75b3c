"""Wakala dispatch engine: orders, matching, offers, API, CLI."""
