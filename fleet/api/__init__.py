"""The fleet's HTTP surfaces: operator routers (`*_api` under /api/v1/) and the device API."""
