"""A region's capacity provider and the catalog its placement chooses from, built from
the region's `capacity:` section: local Ray nodes, EC2 through boto3, or Compute Engine
through google-cloud-compute. New nodes join the region's own cluster."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from google.auth.credentials import AnonymousCredentials

from capacity.catalog import Catalog, SpotQuote, default_catalog
from capacity.live.aws import AwsProvider
from capacity.live.bootstrap import RayJoin
from capacity.live.gcp import GcpProvider
from capacity.live.local import LocalProvider, local_catalog
from capacity.model import Provider
from meridian_core.cluster_spec import AwsCapacity, GcpCapacity
from meridian_core.spec import PlatformSpec, RegionSpec
from meridian_host.node_env import node_env
from meridian_host.platform_state import PlatformState
from meridian_host.region_tokens import cluster_ray_token


def region_catalog(catalog: Catalog, cloud: str, region: str, types: set[str], zones: set[str]) -> Catalog:
    """The offerings of `catalog` the region's settings allow: its instance types in its
    zones. A type the catalog prices in none of those zones (the AWS extract names one
    AZ ID per region, not the zones by name that launches take) is offered in each of
    them at the region's price, until spot quotes for the zones refine it."""
    offerings = [o for o in catalog.offerings(cloud=cloud, region=region) if o.instance_type in types]
    in_zones = [o for o in offerings if o.zone in zones]
    priced = {o.instance_type for o in in_zones}
    stand_ins = {o.instance_type: o for o in offerings if o.instance_type not in priced}
    return Catalog(in_zones + [replace(o, zone=zone) for o in stand_ins.values() for zone in sorted(zones)])


def catalog_for(spec: PlatformSpec, region: RegionSpec) -> Catalog:
    """What the region's placement chooses from, priced: its local node, or the cloud
    catalog's offerings its settings allow."""
    settings = region.capacity
    if isinstance(settings, AwsCapacity):
        types, zones = set(settings.instance_types.values()), set(settings.subnets)
    elif isinstance(settings, GcpCapacity):
        types, zones = set(settings.machine_types.values()), set(settings.zones)
    else:
        return local_catalog(spec, region)
    catalog = default_catalog(spec.capacity.catalog_files)
    return region_catalog(catalog, settings.provider, settings.region, types, zones)


def spot_quotes_for(provider: Provider, region: RegionSpec) -> Callable[[], list[SpotQuote]]:
    """How the region's capacity loop refreshes its spot prices: EC2's spot price history
    for an AWS region; none for others (local nodes have no spot market; GCP's come from
    the Cloud Billing catalog, which this loop does not read yet)."""
    settings = region.capacity
    if isinstance(provider, AwsProvider) and isinstance(settings, AwsCapacity):
        types = set(settings.instance_types.values())
        return lambda: provider.spot_quotes(types)
    return list


def provider_for(spec: PlatformSpec, region: RegionSpec, state: PlatformState) -> tuple[Provider, Catalog]:
    settings = region.capacity
    catalog = catalog_for(spec, region)
    if settings.provider == "local":
        return LocalProvider(spec, state, region), catalog
    cluster = state.clusters[region.name]
    join = RayJoin(
        head_address=cluster.gcs_address,
        region_slug=region.slug,
        auth_token=cluster_ray_token(state, cluster),
        env=node_env(spec.ray),
    )
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
        return provider, catalog
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
    return provider, catalog
