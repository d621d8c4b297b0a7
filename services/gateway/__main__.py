from shared.runtime import serve

serve("gateway", "services.gateway.app:create_app")
