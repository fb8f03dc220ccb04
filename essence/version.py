"""Essence's version, in a module of its own so the modules that record it in files need not
import the package's ``__init__`` (which imports them)."""

__version__ = "0.1.0"
