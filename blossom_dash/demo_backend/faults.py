"""Deliberate, never random, failures in the shapes gen.pollinations.ai uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

FAULTS: tuple[str, ...] = (
    "429", "400", "401", "402", "403", "500", "502", "503", "504",
    "timeout", "malformed", "empty", "not-image", "disconnect",
)
ROUTES: tuple[str, ...] = ("chat", "image")
FAULT_MODEL_PREFIX = "fault-"
DEFAULT_RETRY_AFTER_S = 7
DEFAULT_DELAY_S = 120.0
# The gateway's 4xx body: {"status", "success": false, "error": {"code", "message"}}.
_CLIENT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BAD_REQUEST", "Invalid request parameters (demo backend: injected fault)"),
    401: ("UNAUTHORIZED", "Invalid or missing API key"),
    # Pollinations' own wording, whose two figures the client reads (sdk.account).
    402: ("PAYMENT_REQUIRED", "This model costs ~0.0136 pollen per request, but your available balance is 0.0000 "
                              "(demo backend: injected fault)"),
    403: ("FORBIDDEN", "This key may not use this model (demo backend: injected fault)"),
}


@dataclass(frozen=True)
class Fault:
    """One fault to inject into one response.

    Attributes:
        name: A member of ``FAULTS``.
        retry_after_s: ``Retry-After`` for ``429``, in whole seconds.
        delay_s: How long ``timeout`` stalls before answering normally, in seconds.
    """

    name: str
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    delay_s: float = DEFAULT_DELAY_S


def make_fault(name: Any, retry_after_s: Any = None, delay_s: Any = None) -> Fault:
    """Validate a fault name and its optional knobs (``None`` means the default).

    Args:
        name: A member of ``FAULTS``.
        retry_after_s: Whole seconds for ``Retry-After``.
        delay_s: Seconds a ``timeout`` stalls.

    Returns:
        The ``Fault``.

    Raises:
        ValueError: If the name is unknown or a knob is not a non-negative number.
    """
    if name not in FAULTS:
        raise ValueError(f"Unknown fault {name!r}. Known faults: {', '.join(FAULTS)}")
    try:
        retry = DEFAULT_RETRY_AFTER_S if retry_after_s is None else int(retry_after_s)
        delay = DEFAULT_DELAY_S if delay_s is None else float(delay_s)
    except (TypeError, ValueError):
        raise ValueError("'retry_after' and 'delay_s' must be numbers") from None
    if retry < 0 or delay < 0:
        raise ValueError("'retry_after' and 'delay_s' must not be negative")
    return Fault(name, retry, delay)


class FaultQueue:
    """Queued plans: "the next N chat/image requests fail with fault F".

    Only touched from the server's event loop, so it needs no lock. Each plan is a
    JSON-ready dict (``fault``, ``remaining``, ``routes``, ``retry_after``, ``delay_s``).
    """

    def __init__(self) -> None:
        self._plans: list[dict[str, Any]] = []

    def add(self, body: Any) -> None:
        """Queue a plan from a ``POST /_demo/faults`` body.

        Args:
            body: ``{"fault": name, "count": N (default 1), "routes": ["chat", "image"]
                (default both), "retry_after": s, "delay_s": s}``.

        Raises:
            TypeError: If the body is not a JSON object.
            ValueError: With a message for the client, if a field is invalid.
        """
        if not isinstance(body, dict):
            raise TypeError('body must be a JSON object like {"fault": "429", "count": 1}')
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("'count' must be a positive integer")
        routes = body.get("routes") or list(ROUTES)
        if not isinstance(routes, list) or not set(routes) <= set(ROUTES):
            raise ValueError(f"'routes' must be a list drawn from {list(ROUTES)}")
        fault = make_fault(body.get("fault"), body.get("retry_after"), body.get("delay_s"))
        self._plans.append({"fault": fault.name, "remaining": count,
                            "routes": sorted(set(routes)), "retry_after": fault.retry_after_s,
                            "delay_s": fault.delay_s})

    def take(self, route: str) -> Fault | None:
        """Consume one use of the first plan covering ``route`` (``"chat"``/``"image"``).

        Returns:
            The planned fault, or ``None`` if no plan covers the route.
        """
        for plan in self._plans:
            if route in plan["routes"]:
                plan["remaining"] -= 1
                if plan["remaining"] == 0:
                    self._plans.remove(plan)
                return Fault(plan["fault"], plan["retry_after"], plan["delay_s"])
        return None

    def clear(self) -> int:
        """Drop every plan and return how many there were."""
        dropped = len(self._plans)
        self._plans.clear()
        return dropped

    def snapshot(self) -> list[dict[str, Any]]:
        """Return copies of the queued plans, first to fire first."""
        return [dict(plan) for plan in self._plans]


def resolve_fault(
    headers: Mapping[str, str], model: str, route: str, queue: FaultQueue
) -> Fault | None:
    """Pick the fault for one request: header first, then model name, then the queue.

    The queue is consumed only when neither the header nor the model names a fault.
    ``X-Demo-Retry-After`` and ``X-Demo-Delay`` override the knobs of any source.

    Args:
        headers: Request headers (case-insensitive mapping).
        model: The requested model name; ``fault-<name>`` names a fault.
        route: ``"chat"`` or ``"image"``.
        queue: The app's fault queue.

    Returns:
        The fault to inject, or ``None``.

    Raises:
        ValueError: For an unknown ``X-Demo-Fault`` name or a non-numeric override.
    """
    name = headers.get("X-Demo-Fault", "").strip().lower()
    from_model = model.removeprefix(FAULT_MODEL_PREFIX)
    if name:
        fault: Fault | None = make_fault(name)
    elif model.startswith(FAULT_MODEL_PREFIX) and from_model in FAULTS:
        fault = make_fault(from_model)
    else:
        fault = queue.take(route)
    if fault is None:
        return None
    retry = headers.get("X-Demo-Retry-After", fault.retry_after_s)
    return make_fault(fault.name, retry, headers.get("X-Demo-Delay", fault.delay_s))


def error_response(fault: Fault) -> web.Response | None:
    """Build the response for a status-code fault, ``None`` for behavioural ones.

    Args:
        fault: The fault.

    Returns:
        A 429 with ``Retry-After``, a gateway-shaped 4xx, a 5xx upstream error (503 with
        ``Retry-After: 2``), or ``None`` for ``timeout``, ``malformed`` and the like.
    """
    if not fault.name.isdigit():
        return None
    status = int(fault.name)
    if status == 429:
        s = fault.retry_after_s
        body: dict[str, Any] = {"error": "Rate limit exceeded", "retryAfterSeconds": s,
                                "message": f"Too many requests. Please wait {s} seconds."}
        return web.json_response(body, status=429, headers={"Retry-After": str(s)})
    if status in _CLIENT_ERRORS:
        code, message = _CLIENT_ERRORS[status]
        body = {"status": status, "success": False, "error": {"code": code, "message": message}}
        return web.json_response(body, status=status)
    message = f"Demo backend injected fault: upstream answered HTTP {status}"
    return web.json_response({"error": {"code": "UPSTREAM_ERROR", "message": message}},
                             status=status, headers={"Retry-After": "2"} if status == 503 else None)
