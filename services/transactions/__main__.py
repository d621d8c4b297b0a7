from shared.runtime import serve

serve("transactions", "services.transactions.app:create_app")
