"""From a resolved job to an image: templates, rendering, the BuildKit CLI, base images."""
