"""The package version, in one place (read by the package face, io and the artifacts)."""

__version__ = "0.1.0"
