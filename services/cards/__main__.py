from shared.runtime import serve

serve("cards", "services.cards.app:create_app")
