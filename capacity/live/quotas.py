"""Account quotas on GPU capacity, per (cloud, region, accelerator, market), as plain data.

AWS counts GPU quotas in vCPUs per instance family (all P instances together, all G
and VT instances together), separately for on-demand and spot, through Service
Quotas (`GetServiceQuota`, service code `ec2`). A quota code Service Quotas does not
know in the region (NoSuchResourceException) is left out of the result: unknown,
not zero.

GCP counts GPUs per model and region, with separate `PREEMPTIBLE_` metrics that Spot
VMs use, in the region resource's `quotas` (`regions.get`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.cloud import compute_v1

from capacity.model import Market

# Quota code -> (instance family, market). Values are vCPUs.
AWS_GPU_QUOTAS: Mapping[str, tuple[str, Market]] = {
    "L-417A185B": ("P", Market.ON_DEMAND),  # Running On-Demand P instances
    "L-7212CCBC": ("P", Market.SPOT),  # All P Spot Instance Requests
    "L-DB2E81BA": ("G", Market.ON_DEMAND),  # Running On-Demand G and VT instances
    "L-3819A6DF": ("G", Market.SPOT),  # All G and VT Spot Instance Requests
}
GCP_GPU_METRIC = re.compile(r"^(?P<spot>PREEMPTIBLE_)?NVIDIA_(?P<model>[A-Z0-9_]+)_GPUS$")


@dataclass(frozen=True)
class QuotaLimit:
    cloud: str
    region: str
    accelerator: str  # AWS: the instance family ("P", "G"); GCP: the GPU model ("A100", "A100-80GB")
    market: Market
    limit: float
    unit: str  # "vCPU" (AWS) or "GPU" (GCP)
    quota: str  # the cloud's own name: AWS quota code, GCP metric
    usage: float | None = None  # GCP reports it; AWS Service Quotas does not


def aws_quotas(
    service_quotas: Any,
    codes: Mapping[str, tuple[str, Market]] = AWS_GPU_QUOTAS,
    *,
    service_code: str = "ec2",
    unit: str = "vCPU",  # Service Quotas reports "None" as the unit of EC2's vCPU quotas
) -> list[QuotaLimit]:
    """The applied value of each quota code in the Service Quotas client's region."""
    region = service_quotas.meta.region_name
    limits = []
    for code, (family, market) in codes.items():
        try:
            quota = service_quotas.get_service_quota(ServiceCode=service_code, QuotaCode=code)["Quota"]
        except service_quotas.exceptions.NoSuchResourceException:
            continue
        limits.append(QuotaLimit("aws", region, family, market, float(quota["Value"]), unit, code))
    return limits


def gcp_quotas(regions: compute_v1.RegionsClient, project: str, region: str) -> list[QuotaLimit]:
    """The region's NVIDIA GPU quotas, on-demand and spot."""
    limits = []
    for quota in regions.get(project=project, region=region).quotas:
        match = GCP_GPU_METRIC.match(quota.metric)
        if match is None:
            continue
        market = Market.SPOT if match["spot"] else Market.ON_DEMAND
        model = match["model"].replace("_", "-")
        limits.append(QuotaLimit("gcp", region, model, market, quota.limit, "GPU", quota.metric, quota.usage))
    return limits
