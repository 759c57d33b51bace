"""The admin side of the API the `dpmsfs-server` command line calls on a running server.

Kept apart from HttpBackend (the tools' client): an admin request is one call with one
answer, never retried (a prune must not run twice because an answer was slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

PRUNE_TIMEOUT_S = 6 * 3600  # a prune of a large pool may take long; the server answers at the end


class ClientError(Exception):
    """The server could not be reached or did not answer JSON."""


def post_prune(
    url: str, token: str, namespace: str, request: dict[str, Any], ca: Path | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /v2/<namespace>/prune; (HTTP status, JSON answer)."""
    target = f"{url.rstrip('/')}/v2/{namespace}/prune"
    try:
        answer = requests.post(
            target,
            json=request,
            headers={"Authorization": f"Bearer {token}"},
            timeout=(10, PRUNE_TIMEOUT_S),
            verify=str(ca) if ca is not None else True,
        )
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
    try:
        doc = answer.json()
    except ValueError:
        raise ClientError(f"{target} answered {answer.status_code} without JSON") from None
    if not isinstance(doc, dict):
        raise ClientError(f"{target} answered {answer.status_code} with unexpected JSON")
    return answer.status_code, doc
