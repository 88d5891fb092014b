"""Where Kubernetes objects keep their container images.

Pure functions over the decoded JSON of an AdmissionReview object. Kinds
are matched by API group and kind, so a custom resource that happens to be
called "Deployment" in another group is not mistaken for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

# (group, kind) -> path from the object to its pod spec. "extensions" is
# where Deployments, ReplicaSets and DaemonSets lived before apps/v1.
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "PodTemplate"): ("template", "spec"),
    ("", "ReplicationController"): ("spec", "template", "spec"),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("extensions", "Deployment"): ("spec", "template", "spec"),
    ("extensions", "ReplicaSet"): ("spec", "template", "spec"),
    ("extensions", "DaemonSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
    # Before Kubernetes 1.22 the pods/ephemeralcontainers subresource was
    # reviewed as this kind, with the list at the top level.
    ("", "EphemeralContainers"): (),
}


class MalformedObject(ValueError):
    """The object does not have the shape its kind requires."""


@dataclass(frozen=True, slots=True)
class Container:
    location: str  # e.g. spec.template.spec.initContainers[0]
    name: str  # the container's name ("" when it has none)
    reference: str  # its image, as written
    pointer: str  # JSON Pointer to the image field, e.g. /spec/template/spec/containers/0/image


def controller_owned(obj: Any) -> bool:
    """Whether a controller made this object (an ownerReference with
    controller: true), e.g. a ReplicaSet of a Deployment."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    owners = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    if not isinstance(owners, list):
        return False
    return any(isinstance(o, dict) and o.get("controller") is True for o in owners)


def pod_containers(group: str, kind: str, obj: Any) -> list[Container]:
    """Every container the object would run, in spec order; [] for kinds that
    carry no pod spec. A container without an image names nothing to check
    (the API server rejects such a Pod itself)."""
    path = POD_SPEC_PATHS.get((group, kind))
    if path is None or obj is None:
        return []
    spec = obj
    for i, key in enumerate(path):
        if not isinstance(spec, dict):
            where = ".".join(path[:i]) or "object"
            raise MalformedObject(f"{kind} {where} is not an object")
        spec = spec.get(key)
        if spec is None:
            return []
    if not isinstance(spec, dict):
        raise MalformedObject(f"{kind} {'.'.join(path)} is not an object")
    prefix = ".".join(path) + "." if path else ""
    pointer = "".join(f"/{key}" for key in path)
    found = []
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise MalformedObject(f"{kind} {prefix}{list_name} is not a list")
        for n, container in enumerate(containers):
            location = f"{prefix}{list_name}[{n}]"
            if not isinstance(container, dict):
                raise MalformedObject(f"{kind} {location} is not an object")
            image = container.get("image")
            if image is None or image == "":
                continue
            if not isinstance(image, str):
                raise MalformedObject(f"{kind} {location}.image is not a string")
            name = container.get("name")
            found.append(
                Container(
                    location,
                    name if isinstance(name, str) else "",
                    image,
                    f"{pointer}/{list_name}/{n}/image",
                )
            )
    return found
