"""Route dependencies: the app's one ``Gateway`` and its ``Control``, declared with
``Annotated``. They are ``async def``: FastAPI runs a plain ``def`` dependency in a
worker thread, a thread hand-off on every request for a field read."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from services.control.changes import Control
from services.gateway.errors import UnsupportedFeatureError
from services.gateway.service import Gateway


async def get_gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


async def get_control(request: Request) -> Control:
    """The control plane the control routes change (``build_app(control=...)``)."""
    control = getattr(request.app.state, "control", None)
    if control is None:
        raise UnsupportedFeatureError("this gateway has no control API configured")
    return cast(Control, control)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
ControlDep = Annotated[Control, Depends(get_control)]
