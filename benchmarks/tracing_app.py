"""The ``--app`` of :mod:`benchmarks.tracing_overhead`'s worker processes, and the
span exporter both sides use.

With ``RECONCILE_TRACING=otel`` in the environment, importing this module installs
the OpenTelemetry SDK as the process's TracerProvider, as an application would:
a ``BatchSpanProcessor`` (the SDK's production processor: spans are queued and
exported by a background thread) in front of :class:`EncodingExporter`, which encodes
each batch as the OTLP exporter does (protobuf, when
``opentelemetry-exporter-otlp-proto-common`` is installed) and drops the bytes: the
CPU an exporter costs the process, without a collector to send to.
``BENCH_OTEL_EXPORTER=drop`` skips the encoding, ``simple`` uses a
``SimpleSpanProcessor`` (no export thread): to tell the SDK's cost from the
exporter's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from reconcile import Job


class Noop(Job):
    """The drain's job. Its end is read from the namespace's ``processed`` counter, not
    from :mod:`benchmarks.probe` (whose control database the main harness owns)."""

    name = "tbench.Noop"
    queue = "tdrain"

    def perform(self, i: int) -> None:
        pass


def install_sdk() -> str:
    """Install the SDK provider (once per process); returns what its exporter does."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    how = os.environ.get("BENCH_OTEL_EXPORTER", "encode")  # encode | drop | simple (for diagnosis)
    encode_spans: Any = None
    if how == "encode":
        with contextlib.suppress(ImportError):  # then spans are counted and dropped
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    class EncodingExporter(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0
            self.bytes = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.spans += len(spans)
            if encode_spans is not None:
                self.bytes += len(encode_spans(spans).SerializeToString())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    current: Any = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        processor = SimpleSpanProcessor if how == "simple" else BatchSpanProcessor
        current.add_span_processor(processor(EncodingExporter()))
        trace.set_tracer_provider(current)
    if how == "simple":
        return "SimpleSpanProcessor (no export thread) -> spans counted and dropped"
    return ("BatchSpanProcessor -> OTLP protobuf encoding, bytes dropped" if encode_spans is not None
            else "BatchSpanProcessor -> spans counted and dropped")


if os.environ.get("RECONCILE_TRACING") == "otel":
    install_sdk()
