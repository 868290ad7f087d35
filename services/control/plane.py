"""The two ways ``rdv`` makes a control change, behind one interface (``Plane``):

- ``Remote``: the gateway's control API (``--gateway URL`` / RDV_GATEWAY_URL, the key
  in RDV_API_KEY sent as Bearer): the gateway checks the key, then writes the change;
- ``Direct``: the control topic itself (``--direct``, or no gateway configured), for
  operators whose Kafka ACLs allow writes to it.

Both answer with the control API's JSON shapes, so the commands print the same lines.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

from services.common.errors import RendezvousError
from services.common.spec import ModelSpec
from services.control.changes import Control

Json = dict[str, Any]


class ControlApiError(RendezvousError):
    """The gateway refused the change (its error code is kept) or did not answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Plane(Protocol):
    def models(self) -> list[Json]: ...

    def show(self, endpoint: str) -> Json: ...

    def deploy(self, spec: ModelSpec, who: str) -> Json: ...

    def promote(self, model: str, endpoints: Sequence[str] | None, who: str) -> list[Json]: ...

    def retire(self, model: str, who: str) -> list[Json]: ...

    def set_policy(
        self, endpoint: str, doc: Json, who: str, evidence: Json | None = None
    ) -> Json: ...

    def rollback(self, endpoint: str, who: str) -> Json: ...


class Direct:
    """``Control`` on the control topic, answering in the API's shapes."""

    where = "the control topic (direct)"

    def __init__(self, control: Control) -> None:
        self.control = control

    def models(self) -> list[Json]:
        return [r.model_dump(mode="json") for r in self.control.models()]

    def show(self, endpoint: str) -> Json:
        return self.control.show(endpoint).to_json()

    def deploy(self, spec: ModelSpec, who: str) -> Json:
        return self.control.deploy(spec, who).model_dump(mode="json")

    def promote(self, model: str, endpoints: Sequence[str] | None, who: str) -> list[Json]:
        return [asdict(c) for c in self.control.promote(model, endpoints, who)]

    def retire(self, model: str, who: str) -> list[Json]:
        return [asdict(c) for c in self.control.retire(model, who)]

    def set_policy(self, endpoint: str, doc: Json, who: str, evidence: Json | None = None) -> Json:
        return asdict(self.control.set_policy(endpoint, doc, who, evidence))

    def rollback(self, endpoint: str, who: str) -> Json:
        return asdict(self.control.rollback(endpoint, who))


class Remote:
    """The gateway's ``/v1/control`` API."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.where = f"the gateway at {self.url}"
        self.api_key = api_key
        self.timeout_s = timeout_s

    def models(self) -> list[Json]:
        return list(self._call("GET", "/models")["models"])

    def show(self, endpoint: str) -> Json:
        return self._call("GET", f"/policies/{_segment(endpoint)}")

    def deploy(self, spec: ModelSpec, who: str) -> Json:
        body = {"spec": spec.model_dump(mode="json", exclude_none=True), "by": who}
        return dict(self._call("POST", "/deploy", body)["model"])

    def promote(self, model: str, endpoints: Sequence[str] | None, who: str) -> list[Json]:
        body = {"model": model, "endpoints": list(endpoints) if endpoints else None, "by": who}
        return list(self._call("POST", "/promote", body)["changes"])

    def retire(self, model: str, who: str) -> list[Json]:
        return list(self._call("POST", "/retire", {"model": model, "by": who})["changes"])

    def set_policy(self, endpoint: str, doc: Json, who: str, evidence: Json | None = None) -> Json:
        body: Json = {"policy": doc, "by": who}
        if evidence is not None:  # the gateway's PolicyRequest must accept "evidence"
            body["evidence"] = evidence
        return self._call("PUT", f"/policies/{_segment(endpoint)}", body)

    def rollback(self, endpoint: str, who: str) -> Json:
        return self._call("POST", f"/policies/{_segment(endpoint)}/rollback", {"by": who})

    def _call(self, method: str, path: str, body: Json | None = None) -> Json:
        headers = {"accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        url = f"{self.url}/v1/control{path}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - http(s) checked in gateway_url
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                return _json(resp.read(), url)
        except urllib.error.HTTPError as exc:
            raise _refused(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlApiError("gateway_unavailable", f"{url}: {reason}") from None


def gateway_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else a clear error."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ControlApiError("bad_config", f"--gateway must be http(s)://host[:port], not {url!r}")
    return url


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _json(raw: bytes, url: str) -> Json:
    try:
        data = json.loads(raw)
    except ValueError:
        raise ControlApiError("bad_response", f"{url} did not answer JSON") from None
    if not isinstance(data, dict):
        raise ControlApiError("bad_response", f"{url} did not answer a JSON object")
    return data


def _refused(exc: urllib.error.HTTPError) -> ControlApiError:
    """The gateway's ``{"error": {"code", "message"}}`` as an error, with the status."""
    try:
        error = json.loads(exc.read()).get("error") or {}
    except (ValueError, AttributeError, OSError):
        error = {}
    code = str(error.get("code") or f"http_{exc.code}")
    message = str(error.get("message") or exc.reason)
    return ControlApiError(code, f"the gateway refused (HTTP {exc.code}): {message}")
