"""engine.generation."""
