"""Open the server connection a mount's configuration names (`server`, `token_file`)."""

from __future__ import annotations

import logging
import os

from dpmsfs.config import Config
from dpmsfs.errors import UsageError
from remote.backend import Backend
from remote.http_backend import HttpBackend
from remote.retry import Retrier, RetryPolicy

log = logging.getLogger(__name__)

# The sync service has its own backoff; one call only retries briefly (a blip, a failover).
CALL_RETRY = RetryPolicy(deadline=10.0, first_delay=0.5, max_delay=2.0)
# A server that accepts but never answers (a dead peer behind a load balancer, a black-holed
# route) holds a request this long; tests shorten it.
READ_TIMEOUT = float(os.environ.get("DPMSFS_SYNC_READ_TIMEOUT", "60"))


def read_token(config: Config) -> str:
    if config.token_file is None:
        raise UsageError("sync needs a token: give --token-file (or token_file in the config)")
    try:
        token = config.token_file.read_text().strip()
        mode = os.stat(config.token_file).st_mode
    except OSError as exc:
        raise UsageError(f"token file {config.token_file}: {exc.strerror}") from None
    if not token or len(token.split()) != 1:
        raise UsageError(f"token file {config.token_file}: need one token on one line")
    if mode & 0o077:
        log.warning("token file %s is readable by other users", config.token_file)
    return token


def open_backend(config: Config) -> Backend:
    token = read_token(config)
    try:
        backend = HttpBackend(
            list(config.server),
            config.tool_id,
            token,
            timeout=(5.0, READ_TIMEOUT),
            retrier=Retrier(CALL_RETRY),
            tls_verify=str(config.tls_ca) if config.tls_ca else True,
        )
    except ValueError as exc:
        raise UsageError(f"sync: {exc}") from None
    if not isinstance(backend, Backend):
        backend.close()
        raise UsageError("sync: this installation's remote client does not speak API /v2")
    return backend
