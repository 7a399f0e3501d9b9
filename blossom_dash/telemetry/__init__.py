"""Telemetry: the event collector (journal), the usage store, SQL analytics, exports,
and the Prometheus and JSON-log sinks."""
