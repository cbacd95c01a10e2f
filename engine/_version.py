"""The package version (one place: ``engine.__version__`` and the run fingerprint read it)."""

__version__ = "0.1.0"
