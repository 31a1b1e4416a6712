"""Code both Arbiter services share: configuration, database, auth, errors, server plumbing."""
