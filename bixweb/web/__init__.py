"""The aiohttp layer: handlers, the per-connection writer and the app factory."""
