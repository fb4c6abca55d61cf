"""Small shared utilities: logging."""
