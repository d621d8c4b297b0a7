from shared.runtime import serve

serve("accounts", "services.accounts.app:create_app")
