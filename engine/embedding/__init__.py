"""engine.embedding."""
