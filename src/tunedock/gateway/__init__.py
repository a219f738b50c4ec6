"""The OpenAI-compatible inference gateway under /v1/: authenticate, route, forward."""
