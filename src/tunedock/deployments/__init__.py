"""The deployment manager: versions, jobs, replicas, the live deployment of each model."""
