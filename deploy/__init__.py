"""Deployment assets of sidrec: Docker helper scripts, Kubernetes manifests and the load-test harness.

Only ``deploy.loadtest`` is Python; it talks to a running service over HTTP and never imports it.
"""
