"""The gateway's own HTTP headers (``x-rdv-*``) and how a value is made fit for one."""

from __future__ import annotations

from services.common.messages import OodCheck

REQUEST_ID_HEADER = "x-rdv-request-id"
MODEL_HEADER = "x-rdv-model"
REASON_HEADER = "x-rdv-reason"
TRACE_HEADER = "x-rdv-trace-id"
OOD_HEADER = "x-rdv-ood"  # flagged | clear | unknown, on endpoints with an OOD gate
FINISH_HEADER = "x-rdv-finish-reason"  # a chat completion's: stop, length or deadline
DEADLINE_HEADER = "x-rdv-deadline-ms"  # request: a chat completion's deadline (relative ms)


def ood_headers(check: OodCheck | None) -> dict[str, str]:
    """``x-rdv-ood: <status>`` when the endpoint's OOD gate looked at the request."""
    return {} if check is None else {OOD_HEADER: check.status}


def header_value(text: str, limit: int = 200) -> str:
    """``text`` made safe for an HTTP header: printable ASCII, bounded length."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
