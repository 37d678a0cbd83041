"""Lodestar shared package."""
