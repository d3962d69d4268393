"""OpenTelemetry tracing across the mesh, off unless VM_OTEL_EXPORTER is `console` or `otlp`.

When on, every gRPC server records a span per RPC and every gRPC client the mesh creates propagates the
trace context, so one REST request is one trace across Envoy's upstreams.
"""

from __future__ import annotations

import grpc

from services.common.settings import CommonSettings


def configure_tracing(component: str, settings: CommonSettings) -> list[grpc.aio.ServerInterceptor]:
    """Install the tracer provider; returns the server interceptors to add (none when tracing is off)."""
    if settings.otel_exporter == "none":
        return []
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, aio_server_interceptor
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
    GrpcAioInstrumentorClient().instrument()
    return [aio_server_interceptor()]
