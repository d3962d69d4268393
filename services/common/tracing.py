"""OpenTelemetry tracing across the mesh, off unless VM_OTEL_EXPORTER is `console` or `otlp`.

When on, every gRPC server records a span per RPC, and every channel to another service of the mesh
(services.common.channels) records a span per call and sends the trace context with it, so one REST request is
one trace across the services it reaches.
"""

from __future__ import annotations

import grpc

from services.common.settings import CommonSettings


def configure_tracing(component: str, settings: CommonSettings) -> list[grpc.aio.ServerInterceptor]:
    """Install the tracer provider; returns the server interceptors to add (none when tracing is off)."""
    if settings.otel_exporter == "none":
        return []
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint, insecure=True)
    else:
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"visionmesh-{component}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return [aio_server_interceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's client interceptors: a span per outgoing call, its context injected into the metadata.

    Their tracer is the global proxy, which starts recording once `configure_tracing` has installed a provider:
    services open their channels before they serve (and configure tracing). While tracing is off their spans
    are no-ops and nothing is injected.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors()
