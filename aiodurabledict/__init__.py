"""aiodurabledict."""
