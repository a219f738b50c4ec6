"""The management API under /api/: JSON, one error body, documented by OpenAPI."""
