from shared.runtime import serve

serve("webhooks", "services.webhooks.app:create_app")
