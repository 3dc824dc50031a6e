"""Offline proof of the Kubernetes packaging: Helm chart, kustomize overlays, skaffold, images."""
