from shared.runtime import serve

serve("notifications", "services.notifications.app:create_app")
