"""Measure recognition quality: seeded excerpts, degradations, and a Markdown/CSV report."""
