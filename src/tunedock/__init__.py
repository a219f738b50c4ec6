"""Tunedock: deploy fine-tuned language models as API endpoints."""
