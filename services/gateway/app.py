from fastapi import FastAPI

from services.gateway.ops import health
from shared.runtime import Runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime("gateway")
    service_health = health.ServiceHealth(runtime.settings)
    return runtime.app(routers=[health.router(service_health)], on_shutdown=[service_health.close])
