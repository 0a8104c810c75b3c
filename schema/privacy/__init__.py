"""POPIA duties over the data: which columns hold personal information, and why."""
