"""Audit events as CloudEvents 1.0 in structured JSON mode, POSTed to an HTTP sink (docs/audit.md).

Each event is one POST with `Content-Type: application/cloudevents+json` and a body holding the
context attributes and the data (`cloudevents.conversion.to_structured`), plus
`Authorization: Bearer <token>` when a token is configured. A 2xx answer delivers the event;
connection errors, timeouts, 429 and 5xx are retried (a Retry-After in seconds is honoured up to the
back-off cap); any other answer (3xx included: redirects are not followed, a POST would turn into a
GET) gives the event up.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

import kubetune_operator
from kubetune_operator.audit.queue import Delivery, DeliveryError, QueuedSink
from kubetune_operator.core.audit import AuditEvent

USER_AGENT = f"kubetune-operator/{kubetune_operator.__version__}"


@dataclass(frozen=True)
class CloudEventsSinkConfig:
    """An HTTP(S) endpoint taking CloudEvents (Knative broker, Argo Events webhook, an event bus…).

    `token`: a bearer token (the wiring reads it from a Secret), never logged or shown in repr.
    `ca_file`: a PEM bundle to verify the receiver's certificate with, instead of the system's;
    `ca_data`: the same as text (a per-object sink's CA, read from a Secret).
    `timeout`: seconds for one request (connect and each read). `name` labels the metrics
    (default "cloudevents:<host[:port]>")."""

    url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    max_queue: int = 1000
    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    ca_file: str | None = None
    name: str = ""
    ca_data: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a CloudEvents sink URL must be http(s)://host/…, not {self.url!r}")
        if parts.username or parts.password:
            raise ValueError("put the CloudEvents sink's credentials in its token, not in the URL")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        Delivery(self.max_queue, self.max_attempts, self.backoff_initial, self.backoff_max)  # checks them

    @property
    def sink_name(self) -> str:
        return self.name or f"cloudevents:{urlsplit(self.url).netloc}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def to_cloudevent(event: AuditEvent) -> CloudEvent:
    return CloudEvent(event.attributes(), event.data)


def encode(event: AuditEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of the structured-mode HTTP message of `event`."""
    headers, body = to_structured(to_cloudevent(event))
    return dict(headers), body if isinstance(body, bytes) else str(body).encode()


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: use the back-off instead
        return None


class CloudEventsSink(QueuedSink):
    def __init__(self, config: CloudEventsSinkConfig) -> None:
        self.config = config
        context = (ssl.create_default_context(cafile=config.ca_file, cadata=config.ca_data)
                   if config.ca_file or config.ca_data else None)
        handlers: list[Any] = [_NoRedirects()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)
        super().__init__(config.sink_name, Delivery(config.max_queue, config.max_attempts, config.backoff_initial,
                                                    config.backoff_max))

    def deliver(self, event: AuditEvent) -> None:
        headers, body = encode(event)
        headers["User-Agent"] = USER_AGENT
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            with e:
                status = e.code
                if status == 429:
                    raise DeliveryError("http_429", "429 Too Many Requests", retryable=True,
                                        retry_after=_retry_after(e.headers)) from None
                if status >= 500:
                    raise DeliveryError("http_5xx", f"{status} {e.reason}", retryable=True,
                                        retry_after=_retry_after(e.headers)) from None
                raise DeliveryError("http_4xx" if status >= 400 else "http_3xx", f"{status} {e.reason}",
                                    retryable=False) from None
        except TimeoutError as e:
            raise DeliveryError("timeout", f"no answer within {self.config.timeout:g}s", retryable=True) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise DeliveryError("timeout", f"no answer within {self.config.timeout:g}s", retryable=True) from e
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                raise DeliveryError("tls", str(e.reason), retryable=True) from e
            raise DeliveryError("connection", str(e.reason), retryable=True) from e
        except (OSError, http.client.HTTPException) as e:  # reset mid-answer, RemoteDisconnected, bad status line
            raise DeliveryError("connection", f"{type(e).__name__}: {e}", retryable=True) from e
