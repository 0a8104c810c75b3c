"""Data retention: the catalogue of what may be deleted and when (``policies``, no I/O) and the
runner that applies the active policies to every tenant schema in bounded batches (``runner``).
"""
