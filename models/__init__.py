"""Bundled models built on pyroem's public API."""
