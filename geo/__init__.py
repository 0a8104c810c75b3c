"""Pure geometry: H3 cells, distances, ETAs, geofences. No I/O."""
