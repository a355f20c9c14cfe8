"""Base64url and JWT segment helpers for hand-built tokens in the auth tests."""

from __future__ import annotations

import base64
import json
from typing import Any


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def seg(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())
