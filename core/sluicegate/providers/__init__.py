"""Upstream model adapters."""
