"""hearth.runtime: the kit every Hearth service is built on.

Server bootstrap with health, reflection and interceptors for errors, tracing
and metrics (:class:`ServiceHost`); typed settings (:class:`ServiceSettings`,
:func:`load_settings`); the NATS bus with trace propagation (:class:`NatsBus`)
and the worker-heartbeat subscription with its expiry loop
(:class:`HeartbeatSubscription`);
logging with secret redaction; traced client channels.
"""

from hearth.runtime import subjects
from hearth.runtime.bus import NatsBus
from hearth.runtime.channels import open_channel
from hearth.runtime.heartbeats import HeartbeatSubscription
from hearth.runtime.logs import setup_logging
from hearth.runtime.metrics import ServiceMetrics
from hearth.runtime.redaction import redact
from hearth.runtime.server import ServiceHost, serve
from hearth.runtime.settings import ModelConfig, RoleConfig, ServiceSettings, load_settings
from hearth.runtime.tracing import JOB_ID_ATTRIBUTE, Telemetry, current_trace_id

__all__ = [
    "JOB_ID_ATTRIBUTE",
    "HeartbeatSubscription",
    "ModelConfig",
    "NatsBus",
    "RoleConfig",
    "ServiceHost",
    "ServiceMetrics",
    "ServiceSettings",
    "Telemetry",
    "current_trace_id",
    "load_settings",
    "open_channel",
    "redact",
    "serve",
    "setup_logging",
    "subjects",
]
