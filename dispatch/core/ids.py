"""Ids in the engine: the project's one UUID parser (``schema.ids``, at the bottom of the
tree so that ``streams`` and ``schema`` use the same one), named here for the engine's rooms.
"""

from schema.ids import InvalidId, canonical_uuid, optional_uuid, parse_uuid

__all__ = ["InvalidId", "canonical_uuid", "optional_uuid", "parse_uuid"]
