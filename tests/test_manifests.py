"""The Kubernetes manifests in infra/k8s: kustomizations resolve, workloads are complete."""

import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "infra" / "k8s"
WORKLOADS = {"Deployment", "StatefulSet"}
KNOWN_KINDS = {
    "Kustomization",
    "Namespace",
    "Service",
    "Deployment",
    "StatefulSet",
    "PersistentVolumeClaim",
    "TFJob",
}


def _kustomize(directory: Path) -> list[dict]:
    """The documents a kustomization lists, recursively (what `kubectl apply -k` applies)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    docs = []
    for resource in kustomization["resources"]:
        path = directory / resource
        assert path.exists(), f"{directory}/kustomization.yaml lists missing {resource}"
        if path.is_dir():
            docs += _kustomize(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = _kustomize(ROOT)


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] in WORKLOADS:
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "TFJob":
        return [r["template"]["spec"] for r in doc["spec"]["tfReplicaSpecs"].values()]
    return []


def test_every_document_has_a_known_kind_and_a_name():
    assert {d["kind"] for d in DOCS} <= KNOWN_KINDS
    assert all(d["apiVersion"] and d["metadata"]["name"] for d in DOCS)
    assert {"Deployment", "StatefulSet", "Service", "TFJob"} <= {d["kind"] for d in DOCS}


@pytest.mark.parametrize(
    "doc", [d for d in DOCS if _pod_specs(d)], ids=lambda d: d["metadata"]["name"]
)
def test_workloads_have_images_ports_and_matching_selectors(doc):
    for spec in _pod_specs(doc):
        for container in spec["containers"]:
            assert container["name"] and ":" in container["image"], container
            assert container.get("ports"), f"{container['name']} exposes no port"
        for env in (e for c in spec["containers"] for e in c.get("env", [])):
            # Secrets by reference only: no credential values in the manifests.
            if any(word in env["name"].upper() for word in ("PASSWORD", "SECRET", "KEY")):
                assert "valueFrom" in env and "value" not in env, env["name"]
    if doc["kind"] in WORKLOADS:
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(
    "service", [d for d in DOCS if d["kind"] == "Service"], ids=lambda d: d["metadata"]["name"]
)
def test_services_point_at_a_workload_port(service):
    selector = service["spec"]["selector"]
    targets = [
        d
        for d in DOCS
        if d["kind"] in WORKLOADS
        and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert targets, f"service {service['metadata']['name']} selects no workload"
    ports = {
        p["containerPort"]
        for d in targets
        for c in _pod_specs(d)[0]["containers"]
        for p in c["ports"]
    }
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports


def test_training_job_runs_the_same_train_command_as_multi_worker():
    [job] = [d for d in DOCS if d["kind"] == "TFJob"]
    [container] = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert container["args"][0] == "train"
    assert "trainer.strategy=multi_worker" in container["args"]
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] >= 2


def _locked() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {name.lower(): version for name, _, version in (line.partition("==") for line in lines)}


def test_the_image_installs_every_project_package_and_the_gpu_variant_is_locked():
    import importlib.metadata

    from packaging.requirements import Requirement

    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert f"COPY {package} {package}" in dockerfile
    assert "ARG EXTRAS=server" in dockerfile and '".[${EXTRAS}]"' in dockerfile
    assert project["project"]["optional-dependencies"]["gpu"] == ["tensorflow[and-cuda]==2.21.0"]
    # Every CUDA library TensorFlow asks for with [and-cuda] is pinned, within its range.
    locked = _locked()
    cuda = [
        Requirement(r)
        for r in importlib.metadata.requires("tensorflow")
        if 'extra == "and-cuda"' in r
    ]
    assert cuda
    for requirement in cuda:
        assert requirement.name in locked, requirement.name
        assert locked[requirement.name] in requirement.specifier, requirement
