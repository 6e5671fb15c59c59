"""deploy/k8s: the manifests render and hang together (selectors, probes, references, GPU overlay).

Rendering uses `kubectl kustomize` (works offline) when kubectl is installed; otherwise the base's
files are read directly and the GPU overlay checks are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S, REPO, load_yaml_docs

README = REPO / "deploy" / "README.md"

WORKLOADS = ("Deployment", "StatefulSet", "Job")


def _render(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        if overlay != "base":
            pytest.skip("kubectl is not installed: cannot render the kustomize overlay")
        files = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
        return [doc for name in files for doc in load_yaml_docs(K8S / "base" / name)]
    result = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["base", "gpu"])
def docs(request) -> list[dict[str, Any]]:
    return _render(request.param)


def _one(docs, kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_document_has_the_required_fields(docs):
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "Job",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
    } <= kinds


def test_selectors_match_pod_labels(docs):
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), doc["metadata"]["name"]
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in WORKLOADS]
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pods), service["metadata"]["name"]


def test_api_probes_resources_and_settings(docs):
    api = _one(docs, "Deployment", "sidrec-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {port["name"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    refs = {src.get("configMapRef", src.get("secretRef", {})).get("name") for src in container["envFrom"]}
    assert refs == {"sidrec-config", "sidrec-api-key"}
    _one(docs, "ConfigMap", "sidrec-config")
    assert not [d for d in docs if d["kind"] == "Secret"], "apply -k must never overwrite the real key"
    (secret,) = load_yaml_docs(K8S / "base" / "secret.yaml")  # its shape, applied by hand if at all
    assert secret["metadata"] == {"name": "sidrec-api-key", "namespace": "sidrec"}
    assert "SIDREC_API_KEY" in secret["stringData"]


def test_the_documented_kubernetes_steps_run_in_order():
    """deploy/README's steps from the repository root: the namespace before the Secret in it, and
    no ``cd`` that would leave the later relative paths pointing elsewhere."""
    text = README.read_text()
    block = text.split("## Kubernetes", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    namespace = next(i for i, line in enumerate(lines) if "namespace.yaml" in line)
    secret = next(i for i, line in enumerate(lines) if "create secret" in line)
    assert namespace < secret
    assert not [line for line in lines if line.startswith("cd ") or "&& cd " in line]
    for line in lines:  # every path a step names exists, relative to the repository root
        for word in line.split():
            if word.startswith("deploy/"):
                assert (REPO / word).exists(), word


def test_every_container_sets_resources_and_every_claim_exists(docs):
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for doc in (d for d in docs if d["kind"] in WORKLOADS):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert "limits" in container.get("resources", {}), (doc["metadata"]["name"], container["name"])
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_hpa_targets_the_api_deployment(docs):
    hpa = _one(docs, "HorizontalPodAutoscaler", "sidrec-api")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "sidrec-api")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_redis_is_persistent_and_append_only(docs):
    redis = _one(docs, "StatefulSet", "sidrec-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert redis["spec"]["serviceName"] == "sidrec-redis"


def test_bundle_job_runs_torchrun_into_the_shared_volume(docs):
    job = _one(docs, "Job", "sidrec-bundle")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["LAUNCHER"].startswith("torchrun ")
    assert {"name": "bundles", "mountPath": "/bundles"} in container["volumeMounts"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_gpu_overlay_puts_the_api_on_gpu_nodes():
    docs = _render("gpu")
    spec = _one(docs, "Deployment", "sidrec-api")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the patch keeps the base's probes
    base_api = _one(_render("base"), "Deployment", "sidrec-api")
    assert "nodeSelector" not in base_api["spec"]["template"]["spec"]


def test_api_keeps_its_event_spool_on_a_claim_and_stops_within_the_pod_grace(docs):
    api = _one(docs, "Deployment", "sidrec-api")["spec"]["template"]["spec"]
    (container,) = api["containers"]
    spool_dir = _one(docs, "ConfigMap", "sidrec-config")["data"]["SIDREC_SPOOL_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == spool_dir]
    (volume,) = [v for v in api["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "sidrec-spool"
    grace = float(_one(docs, "ConfigMap", "sidrec-config")["data"]["SIDREC_SHUTDOWN_GRACE_S"])
    assert grace < api["terminationGracePeriodSeconds"]


def test_api_pods_are_protected_by_a_disruption_budget(docs):
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sidrec-api")
    assert api["spec"]["replicas"] >= 2
    (budget,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] < api["spec"]["replicas"]
