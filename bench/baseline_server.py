"""The in-process baseline for bench.stream_overhead: the same echo model called inside
a FastAPI handler, served by uvicorn like the gateway, with the same body checks and the
same response shape. No Kafka, no other process: what a plain serving layer costs.

    python -m bench.baseline_server --port 8090
"""

from __future__ import annotations

import argparse
import uuid

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.common.clock import mono_ms
from services.gateway.routes.infer import parse
from services.workers.testmodels import EchoModel


def build_app() -> FastAPI:
    model = EchoModel({"latency_ms": 0})
    model.load()
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/infer/{endpoint}")
    async def infer(endpoint: str, request: Request) -> Response:
        started = mono_ms()
        req = parse(await request.body())
        [output] = model.predict_batch([req.inputs])
        rid = uuid.uuid4().hex
        return JSONResponse(
            {
                "request_id": rid,
                "model": "echo",
                "reason": "baseline",
                "output": output,
                "latency_ms": round(mono_ms() - started, 3),
            },
            headers={"x-rdv-request-id": rid, "x-rdv-model": "echo"},
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvicorn.run(
        build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
