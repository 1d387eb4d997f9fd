"""The image cache: the key (pure), the local store and the registry."""
