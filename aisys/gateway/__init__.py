"""The API gateway inside the FastAPI ingress: API keys and scopes, shopper sessions, rate limits, response cache,
body limits, request ids, JSON access logs and CORS (see docs/gateway.md).

Importing this package never imports Ray: the shared rate-limiter actor is
created on first use.
"""

from aisys.gateway.cache import CacheKey, ResponseCache
from aisys.gateway.dev_keys import ensure_dev_keys, read_dev_keys
from aisys.gateway.gateway import ANONYMOUS, SHOPPER_SCOPES, Gateway, Principal
from aisys.gateway.keys import (
    SCOPES,
    FileKeyStore,
    InMemoryKeyStore,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    create_key,
    list_keys,
    revoke_key,
)
from aisys.gateway.middleware import GatewayError
from aisys.gateway.ratelimit import Decision, InMemoryRateLimiter, RateLimiter, RayRateLimiter, TokenBucket
from aisys.gateway.shopper import InvalidToken, ShopperSession, ShopperTokens

__all__ = [
    "ANONYMOUS",
    "SCOPES",
    "SHOPPER_SCOPES",
    "CacheKey",
    "Decision",
    "FileKeyStore",
    "Gateway",
    "GatewayError",
    "InMemoryKeyStore",
    "InMemoryRateLimiter",
    "InvalidToken",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "Principal",
    "RateLimiter",
    "RayRateLimiter",
    "ResponseCache",
    "ShopperSession",
    "ShopperTokens",
    "TokenBucket",
    "create_key",
    "ensure_dev_keys",
    "list_keys",
    "read_dev_keys",
    "revoke_key",
]
