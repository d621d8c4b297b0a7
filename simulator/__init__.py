"""The card-network simulator: population, scenarios, open-loop load, reports."""
