"""Lodestar worker package."""
