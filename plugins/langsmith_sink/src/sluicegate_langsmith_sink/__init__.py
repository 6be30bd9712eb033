"""The ``langsmith`` sink for Sluicegate."""

__version__ = "0.1.0"
