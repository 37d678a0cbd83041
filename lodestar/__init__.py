"""Lodestar lodestar package."""
