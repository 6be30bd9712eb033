"""The ``azure_storage`` sink for Sluicegate."""

__version__ = "0.1.0"
