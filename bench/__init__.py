"""Lodestar bench package."""
