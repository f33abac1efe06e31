"""Collectflow's engine."""
