"""The HTTP edge every request-facing room shares.

``http`` (bodies, JSON, bearer tokens, the two error envelopes), ``text`` (text that can
travel on: no lone surrogate, no NUL), ``limits`` (the ASGI layer in front of every route:
target, header and body limits, the last-resort 500/503), ``protocols`` (uvicorn's protocols
with the same limits on the request head), ``outages`` (503 for a service outage, 500 for
the rest, neither with infrastructure detail), ``operators`` (readiness, metrics, API
documents), ``ratelimit`` and ``failures`` (per-caller limits) and ``ttlcache`` (a bounded
cache with expiry).
"""
