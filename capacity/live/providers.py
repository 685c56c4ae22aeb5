"""A region's capacity provider and the catalog its placement chooses from, built from
the region's `capacity:` section: local Ray nodes, EC2 through boto3, or Compute Engine
through google-cloud-compute. New nodes join the region's own cluster."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials

from capacity.catalog import Catalog, default_catalog
from capacity.live.aws import AwsProvider
from capacity.live.bootstrap import RayJoin
from capacity.live.gcp import GcpProvider
from capacity.live.local import LocalProvider, local_catalog
from capacity.model import Provider
from meridian_core.cluster_spec import AwsCapacity, GcpCapacity
from meridian_core.spec import PlatformSpec, RegionSpec
from meridian_host.platform_state import PlatformState


def region_catalog(catalog: Catalog, cloud: str, region: str, types: set[str], zones: set[str] | None) -> Catalog:
    """The offerings of `catalog` the region's settings allow: its instance types, in its
    zones where the catalog names zones as the cloud does (the AWS extract has AZ IDs;
    its zones by name arrive with spot quotes)."""
    return Catalog(
        o
        for o in catalog.offerings(cloud=cloud, region=region)
        if o.instance_type in types and (zones is None or o.zone in zones)
    )


def provider_for(spec: PlatformSpec, region: RegionSpec, state: PlatformState) -> tuple[Provider, Catalog]:
    settings = region.capacity
    if settings.provider == "local":
        return LocalProvider(spec, state, region), local_catalog(spec, region)
    join = RayJoin(head_address=state.clusters[region.name].gcs_address, region_slug=region.slug)
    if isinstance(settings, AwsCapacity):
        provider = AwsProvider(
            region=settings.region,
            platform=spec.name,
            join=join,
            image_id=settings.image_id,
            endpoint_url=settings.endpoint_url,
            subnet_by_zone=settings.subnets,
            security_group_ids=settings.security_group_ids,
            iam_instance_profile=settings.iam_instance_profile,
            public_ip=settings.public_ip,
        )
        types = set(settings.instance_types.values())
        return provider, region_catalog(default_catalog(), "aws", settings.region, types, zones=None)
    assert isinstance(settings, GcpCapacity)
    provider = GcpProvider(
        project=settings.project,
        region=settings.region,
        platform=spec.name,
        join=join,
        source_image=settings.image,
        network=settings.network,
        # An emulator (`api_endpoint`) takes no Google credentials; Google itself takes the default ones.
        credentials=AnonymousCredentials() if settings.api_endpoint else None,
        client_options={"api_endpoint": settings.api_endpoint} if settings.api_endpoint else None,
    )
    types = set(settings.machine_types.values())
    return provider, region_catalog(default_catalog(), "gcp", settings.region, types, set(settings.zones))
