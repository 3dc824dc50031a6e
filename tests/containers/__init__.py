"""The real images, built with podman and run as the chart runs them."""
