"""The OpenAI-compatible service: app, routes, batching, keys and limits, metrics."""
