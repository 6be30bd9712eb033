"""Test helpers for sink authors: the conformance suite, a loopback receiver, sample events, delivery."""

from __future__ import annotations

from sluicegate.testing.deliver import DeliveryReport, deliver
from sluicegate.testing.events import make_event
from sluicegate.testing.gateway import RunningGateway, running_gateway
from sluicegate.testing.receiver import HttpReceiver
from sluicegate.testing.relay import TcpRelay
from sluicegate.testing.standard import SinkStandardTests
from sluicegate.testing.waiting import wait_until, wait_until_async

__all__ = ("DeliveryReport", "HttpReceiver", "RunningGateway", "SinkStandardTests", "TcpRelay", "deliver",
           "make_event", "running_gateway", "wait_until", "wait_until_async")
