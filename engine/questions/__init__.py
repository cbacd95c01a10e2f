"""engine.questions."""
