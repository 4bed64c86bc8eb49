"""Trajectories: schema, rollout, rendering."""
