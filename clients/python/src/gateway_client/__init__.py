"""Python server SDK of the gateway: the HTTP API v1 (sync :class:`Client`,
asyncio :class:`AsyncClient`), connection tokens (:func:`mint_token`),
webhook signatures (:func:`verify_webhook`) and task logs (:func:`task_log`,
:class:`TaskLog`). See README.md and docs/protocol.md."""

from .async_client import AsyncClient
from .client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Client
from .errors import (
    ApiError,
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    GatewayUnavailable,
    InternalError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
)
from .models import (
    ChannelEntry,
    ChannelInfo,
    ChannelPage,
    History,
    HistoryMessage,
    HistorySummary,
    Member,
    NodeInfo,
    Presence,
    PresenceSummary,
    PublishResult,
    UserConnection,
    UserStatus,
)
from .tasklog import TaskLog, atask_log, task_log
from .tokens import mint_token
from .webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    check_webhook,
    parse_webhook,
    sign_webhook,
    verify_webhook,
    verify_webhook_headers,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    # errors
    "GatewayError",
    "GatewayUnavailable",
    "GatewayTimeout",
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "TooLarge",
    "RateLimited",
    "Unavailable",
    "InternalError",
    "WebhookVerificationError",
    # answers
    "PublishResult",
    "Member",
    "Presence",
    "HistoryMessage",
    "History",
    "PresenceSummary",
    "HistorySummary",
    "ChannelInfo",
    "ChannelEntry",
    "ChannelPage",
    "UserConnection",
    "UserStatus",
    "NodeInfo",
    # tokens, webhooks, task logs
    "mint_token",
    "verify_webhook",
    "verify_webhook_headers",
    "check_webhook",
    "parse_webhook",
    "sign_webhook",
    "TIMESTAMP_HEADER",
    "SIGNATURE_HEADER",
    "task_log",
    "atask_log",
    "TaskLog",
]
