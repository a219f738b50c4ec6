"""Users, API keys, personal access tokens and the identity that every request acts as."""
