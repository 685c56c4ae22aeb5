"""What every rendered object shares: names, Kubernetes' recommended labels, the
non-root security contexts, resources, and the Secrets the user creates."""

from __future__ import annotations

from typing import Any

import yaml

from meridian_core.kubernetes_spec import PodResources
from meridian_core.spec import PlatformSpec, RegionSpec


class RenderError(ValueError):
    """A spec that cannot be rendered; the message names the field."""


# The image's user (platform/image/Dockerfile).
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# The key a token Secret holds its token under.
TOKEN_KEY = "token"


def selector_labels(spec: PlatformSpec, component: str) -> dict[str, str]:
    """The labels that pick a component's pods; they never change for a running object."""
    return {
        "app.kubernetes.io/name": "meridian",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
    }


def recommended_labels(spec: PlatformSpec, component: str) -> dict[str, str]:
    """Kubernetes' recommended `app.kubernetes.io/*` labels."""
    return {
        **selector_labels(spec, component),
        "app.kubernetes.io/part-of": "meridian",
        "app.kubernetes.io/managed-by": "meridian",
    }


def metadata(spec: PlatformSpec, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": recommended_labels(spec, component)}


def resources(pod: PodResources, **extra: str) -> dict[str, dict[str, str]]:
    """Requests equal to limits: the pod is sized, never overcommitted."""
    sized = {"cpu": pod.cpu, "memory": pod.memory, **extra}
    return {"requests": dict(sized), "limits": dict(sized)}


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """An environment variable read from a Secret the user creates; no value is rendered."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def region_token_secret(region: RegionSpec) -> str:
    """The Secret holding the region's token (key `token`), which its apps require and
    the router and the global loop present."""
    return f"meridian-{region.slug}-region-token"


def region_token_env(spec: PlatformSpec) -> list[dict[str, Any]]:
    """Every region's token, under the variable its spec names (`RegionSpec.token_env`)."""
    return [secret_env(r.token_env, region_token_secret(r), TOKEN_KEY) for r in spec.regions]


def http_probe(path: str, port: str | int, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


class _PlainDumper(yaml.SafeDumper):
    """YAML a person reads: a value used twice is written twice, never as an anchor, and
    an embedded document (a spec, a Serve config) as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_PlainDumper.add_representer(str, _text)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)


def dump_yaml_all(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False)
