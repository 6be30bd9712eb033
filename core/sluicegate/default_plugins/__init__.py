"""Built-in plugins, loaded through the same plugin manager path as third-party ones."""
