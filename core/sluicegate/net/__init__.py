"""Networking shared by providers and sinks: the lean HTTP/1.1 client (:mod:`sluicegate.net.http`)."""
