"""The package version (its own module: the entrypoints read it without importing the facade)."""
__version__ = "0.1.0"
