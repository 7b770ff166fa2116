"""Where decisions go: the ``EventSink`` Protocol (``base``), the play log, the MQTT publisher with
its durable outbox, and the topics and payloads as pure functions (``topics``)."""

from tunetrace.publish.base import EventSink, FanoutSink, LogSink

__all__ = ["EventSink", "FanoutSink", "LogSink"]
