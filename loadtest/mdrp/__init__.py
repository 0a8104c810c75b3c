"""`wakala bench mdrp`: the engine's matching rules on the Grubhub Meal Delivery Routing Problem set.

``instance`` reads and checks the set's files, ``travel`` is the set's travel-time model,
``sim`` replays an instance's day minute by minute with a ``policies`` decision rule,
``solution`` writes (and reads back) the set's three solution files, ``evaluate`` checks
feasibility with the set's rules and computes its measures, ``report`` runs and prints.
"""
