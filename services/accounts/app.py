from fastapi import FastAPI

from shared.runtime import Runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime("accounts")
    return runtime.app()
