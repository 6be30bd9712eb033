"""Sinks: the interface plugins implement, and the machinery that delivers events to them."""
