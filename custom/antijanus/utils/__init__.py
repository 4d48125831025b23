"""Shared utilities: configuration errors, atomic cache files, images, progress bars."""
