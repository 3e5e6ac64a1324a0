"""Hub read API (aiohttp): fleet, event search across edges, dead letters, health, metrics."""
