"""Where a region runs: its own Ray cluster (`cluster:`) and where that cluster's nodes
come from (`capacity:`, the region's cloud provider and its settings).

In production a Ray cluster does not span regions, so each region is a cluster of its
own: Meridian starts one (`managed: true`; on this machine a local Ray head) or uses one
that exists (`address:`, e.g. a KubeRay RayCluster). The cluster's nodes are bought by
the region's capacity loop from the provider named here: Ray nodes on this machine
(`local`), EC2 through boto3 (`aws`) or Compute Engine through google-cloud-compute
(`gcp`). `endpoint_url` / `api_endpoint` point the SDKs at an emulator in tests.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A Ray GCS address as `ray start --address` takes it.
GCS_ADDRESS = r"^[A-Za-z0-9.-]+:\d{1,5}$"
HTTP_URL = r"^https?://[^\s/]+(/[^\s]*)?$"
AWS_REGION = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"
AWS_ZONE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
GCP_ZONE = r"^[a-z]+-[a-z]+\d+-[a-z]$"
ENV_VAR = r"^[A-Z_][A-Z0-9_]*$"


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSpec(StrictSection):
    """A region's Ray cluster: started by Meridian, or an existing one reached by address."""

    managed: bool = True
    # An existing cluster's GCS (`host:port`) and its dashboard, where Serve apps are deployed.
    address: str | None = Field(default=None, pattern=GCS_ADDRESS)
    dashboard_url: str | None = Field(default=None, pattern=HTTP_URL)
    # The environment variable holding the region's control token, which the global loop
    # sets the region's replica floor with. Unset: MERIDIAN_REGION_TOKEN_<SLUG>, which
    # `meridian up` fills for the clusters it starts.
    token_env: str | None = Field(default=None, pattern=ENV_VAR)

    @model_validator(mode="after")
    def _one_kind(self) -> ClusterSpec:
        if self.managed and (self.address or self.dashboard_url):
            raise ValueError("address: Meridian starts a managed cluster; set managed: false to use an existing one")
        if not self.managed and not (self.address and self.dashboard_url):
            raise ValueError("address: an existing cluster (managed: false) needs both address and dashboard_url")
        return self


Market = Literal["spot-preferred", "on-demand"]
# Accelerator (as the region's `accelerator` names it) -> the instance or machine type that carries it.
InstanceTypes = Annotated[dict[str, str], Field(min_length=1)]


class LocalCapacity(StrictSection):
    """Ray nodes started as processes on this machine."""

    provider: Literal["local"] = "local"
    # This machine has no spot market.
    market: Literal["on-demand"] = "on-demand"


class AwsCapacity(StrictSection):
    """EC2 in one AWS region, through boto3."""

    provider: Literal["aws"]
    region: str = Field(pattern=AWS_REGION)
    # The subnet to launch into, per availability zone: the zones the region may use.
    subnets: dict[str, str] = Field(min_length=1)
    security_group_ids: list[str] = Field(min_length=1)
    image_id: str = Field(pattern=r"^ami-[0-9a-f]+$")
    instance_types: InstanceTypes
    iam_instance_profile: str | None = None
    market: Market = "spot-preferred"
    # Off unless asked: nodes reach their head over the VPC, never from the internet.
    public_ip: bool = False
    # An EC2-compatible endpoint (moto in tests); unset: AWS itself.
    endpoint_url: str | None = Field(default=None, pattern=HTTP_URL)

    @model_validator(mode="after")
    def _zones_in_region(self) -> AwsCapacity:
        for zone in self.subnets:
            if not AWS_ZONE.match(zone) or not zone.startswith(self.region):
                raise ValueError(f"subnets: {zone!r} is not an availability zone of {self.region}")
        return self


class GcpCapacity(StrictSection):
    """Compute Engine in one GCP region, through google-cloud-compute."""

    provider: Literal["gcp"]
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    zones: list[Annotated[str, Field(pattern=GCP_ZONE)]] = Field(min_length=1)
    machine_types: InstanceTypes
    # e.g. projects/<project>/global/images/family/<family>
    image: str = Field(min_length=1)
    network: str = "global/networks/default"
    market: Market = "spot-preferred"
    # A Compute-compatible REST endpoint (the local emulator in tests), reached without
    # Google credentials; unset: Google itself, with the default credentials.
    api_endpoint: str | None = Field(default=None, pattern=HTTP_URL)

    @property
    def region(self) -> str:
        return self.zones[0].rsplit("-", 1)[0]

    @model_validator(mode="after")
    def _zones_in_one_region(self) -> GcpCapacity:
        regions = sorted({zone.rsplit("-", 1)[0] for zone in self.zones})
        if len(regions) > 1:
            raise ValueError(f"zones: all in one region, not {', '.join(regions)}")
        return self


RegionCapacity = Annotated[LocalCapacity | AwsCapacity | GcpCapacity, Field(discriminator="provider")]
