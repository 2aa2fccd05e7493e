"""Code shared by the site (client) and the coordinator (server)."""
