"""Tenant moves between shards: plan, replication, fence, runner, cleanup, drain and rebalance."""
