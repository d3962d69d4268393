"""Structured logging: structlog for our code and the standard library's loggers alike.

Context such as `request_id`, `rpc` and `job_id` is bound with `structlog.contextvars.bind_contextvars`
and appears on every line logged within that request or job, including lines from worker threads started
with `asyncio.to_thread` (which copies the context).
"""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace

from services.common.settings import CommonSettings


def _add_trace_id(_logger: object, _name: str, event: dict) -> dict:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
    return event


def configure_logging(component: str, settings: CommonSettings) -> None:
    use_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
        lambda _l, _n, event: {"component": component, **event},
    ]
    renderer = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries that are chatty at INFO.
    for noisy in ("alembic.runtime.migration", "PIL", "multipart", "python_multipart", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
