"""Replica backends: where model-server processes run. Local processes today."""
