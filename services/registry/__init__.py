"""The registry: agents register their capabilities, heartbeat, and are listed and looked up."""
