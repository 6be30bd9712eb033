"""The ``s3`` sink for Sluicegate."""

__version__ = "0.1.0"
