"""Faust app, typed records, topics and agents."""
