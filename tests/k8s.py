"""Builders for the review bodies the Kubernetes API server and Gatekeeper
send, shaped like the real ones (admission.k8s.io/v1 AdmissionReview,
imagepolicy.k8s.io/v1alpha1 ImageReview, Gatekeeper ProviderRequest)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

Spec = dict[str, Any]


def _template(spec: Spec) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "web"}}, "spec": spec}


def _workload(spec: Spec) -> dict[str, Any]:
    return {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": _template(spec)}


# kind -> (group, version, resource, build object from a pod spec)
KINDS: dict[str, tuple[str, str, str, Callable[[Spec], dict[str, Any]]]] = {
    "Pod": ("", "v1", "pods", lambda s: {"spec": s}),
    "PodTemplate": ("", "v1", "podtemplates", lambda s: {"template": _template(s)}),
    "ReplicationController": (
        "",
        "v1",
        "replicationcontrollers",
        lambda s: {"spec": {"replicas": 1, "template": _template(s)}},
    ),
    "Deployment": ("apps", "v1", "deployments", lambda s: {"spec": _workload(s)}),
    "ReplicaSet": ("apps", "v1", "replicasets", lambda s: {"spec": _workload(s)}),
    "StatefulSet": ("apps", "v1", "statefulsets", lambda s: {"spec": _workload(s)}),
    "DaemonSet": ("apps", "v1", "daemonsets", lambda s: {"spec": _workload(s)}),
    "Job": ("batch", "v1", "jobs", lambda s: {"spec": {"template": _template(s)}}),
    "CronJob": (
        "batch",
        "v1",
        "cronjobs",
        lambda s: {
            "spec": {
                "schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": _template(s)}},
            }
        },
    ),
}

# Where each kind's container lists live, as reported in denial messages.
SPEC_PATHS = {
    "Pod": "spec",
    "PodTemplate": "template.spec",
    "CronJob": "spec.jobTemplate.spec.template.spec",
}


def spec_path(kind: str) -> str:
    return SPEC_PATHS.get(kind, "spec.template.spec")


def pod_spec(
    containers: list[str], init: list[str] | None = None, ephemeral: list[str] | None = None
) -> Spec:
    spec: Spec = {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(containers)]}
    if init is not None:
        spec["initContainers"] = [{"name": f"init{i}", "image": im} for i, im in enumerate(init)]
    if ephemeral is not None:
        spec["ephemeralContainers"] = [
            {"name": f"debug{i}", "image": im} for i, im in enumerate(ephemeral)
        ]
    return spec


def admission_review(
    kind: str,
    spec: Spec | None = None,
    *,
    operation: str = "CREATE",
    obj: dict[str, Any] | None = None,
    group: str | None = None,
    version: str | None = None,
    resource: str | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    if kind in KINDS:
        g, v, r, build = KINDS[kind]
        if obj is None and spec is not None:
            obj = build(spec)
    else:
        g, v, r = "", "v1", kind.lower() + "s"
    group = g if group is None else group
    version = v if version is None else version
    resource = r if resource is None else resource
    if obj is not None:
        api_version = f"{group}/{version}" if group else version
        obj = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": "web", "namespace": "team-a"},
            **obj,
        }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": "web",
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": None if operation == "DELETE" else obj,
            "oldObject": copy.deepcopy(obj) if operation in ("UPDATE", "DELETE") else None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def image_review(*images: str, namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "imagepolicy.k8s.io/v1alpha1",
        "kind": "ImageReview",
        "spec": {
            "containers": [{"image": image} for image in images],
            "annotations": {"team.image-policy.k8s.io/ticket": "1234"},
            "namespace": namespace,
        },
    }


def provider_request(*keys: str, api: str = "externaldata.gatekeeper.sh/v1beta1") -> dict:
    return {"apiVersion": api, "kind": "ProviderRequest", "request": {"keys": list(keys)}}
