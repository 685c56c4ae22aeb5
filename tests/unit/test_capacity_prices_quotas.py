"""Price and quota readers through boto3 (moto server behind the fault proxy) and
google-cloud-compute / urllib (the local Compute + Billing Catalog endpoint).

moto's DescribeSpotPriceHistory answers every (zone, type) it offers with one fixed
price, 0.00001 USD at 2006-01-02T15:04:05Z, and ignores StartTime and
ProductDescriptions; moto's Service Quotas knows only `vpc` quota codes, so EC2 GPU
quota codes are answered by the proxy with Service Quotas' own JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from capacity.catalog import default_catalog
from capacity.live.prices import GcpMachineShape, aws_spot_quotes, fetch_billing_skus, gcp_spot_quotes
from capacity.live.quotas import AWS_GPU_QUOTAS, QuotaLimit, aws_quotas, gcp_quotas
from capacity.model import Market
from tests.emulated_clouds.aws import AWS_REGION, Answer, FaultProxy, moto_behind_proxy
from tests.emulated_clouds.gcp import FakeComputeApi

MOTO_SPOT_PRICE = 0.00001
MOTO_SPOT_TIME = datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[FaultProxy, boto3.session.Session]]:
    with moto_behind_proxy() as proxy:
        yield proxy, boto3.session.Session()


@pytest.fixture
def proxy(aws: tuple[FaultProxy, boto3.session.Session]) -> Iterator[FaultProxy]:
    aws[0].clear()
    yield aws[0]
    aws[0].clear()


def client(aws: tuple[FaultProxy, boto3.session.Session], service: str):  # noqa: ANN201 - boto3 client types
    proxy, session = aws
    return session.client(service, region_name=AWS_REGION, endpoint_url=proxy.url)


def test_spot_quotes_from_moto(aws: tuple[FaultProxy, boto3.session.Session], proxy: FaultProxy) -> None:
    ec2 = client(aws, "ec2")
    zones = {zone["ZoneName"] for zone in ec2.describe_availability_zones()["AvailabilityZones"]}

    quotes = aws_spot_quotes(ec2, ["p4d.24xlarge", "g5.xlarge"], now_s=1_795_000_000)

    assert {quote.instance_type for quote in quotes} == {"p4d.24xlarge", "g5.xlarge"}
    assert {quote.zone for quote in quotes} <= zones
    assert len({(quote.zone, quote.instance_type) for quote in quotes}) == len(quotes)
    for quote in quotes:
        assert (quote.cloud, quote.region) == ("aws", AWS_REGION)
        assert (quote.usd_per_h, quote.at_s) == (MOTO_SPOT_PRICE, MOTO_SPOT_TIME)
    (request,) = [p for op, p in zip(proxy.seen, proxy.params, strict=True) if op == "DescribeSpotPriceHistory"]
    assert request["StartTime"] == [datetime.fromtimestamp(1_795_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert request["ProductDescription.1"] == ["Linux/UNIX"]


def price_history_xml(entries: list[tuple[str, str, str, str]]) -> str:
    items = "".join(
        f"<item><instanceType>{kind}</instanceType><productDescription>Linux/UNIX</productDescription>"
        f"<spotPrice>{price}</spotPrice><timestamp>{at}</timestamp><availabilityZone>{zone}</availabilityZone></item>"
        for zone, kind, price, at in entries
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>2b6c0e9e-1f32-4f0e-8f6f-0e4d3c2b1a09</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>"
        "<nextToken/></DescribeSpotPriceHistoryResponse>"
    )


def test_spot_quotes_keep_the_latest_price(aws: tuple[FaultProxy, boto3.session.Session], proxy: FaultProxy) -> None:
    history = [
        ("us-east-1a", "p4d.24xlarge", "9.832700", "2026-11-22T10:00:00.000Z"),
        ("us-east-1a", "p4d.24xlarge", "11.572100", "2026-11-22T14:00:00.000Z"),
        ("us-east-1b", "p4d.24xlarge", "8.100000", "2026-11-21T09:30:00.000Z"),
    ]
    proxy.answer("DescribeSpotPriceHistory", Answer(200, price_history_xml(history)))

    quotes = aws_spot_quotes(client(aws, "ec2"), ["p4d.24xlarge"])

    assert [(q.zone, q.usd_per_h, q.at_s) for q in quotes] == [
        ("us-east-1a", 11.5721, datetime(2026, 11, 22, 14, tzinfo=UTC).timestamp()),
        ("us-east-1b", 8.1, datetime(2026, 11, 21, 9, 30, tzinfo=UTC).timestamp()),
    ]


def test_moto_service_quotas_has_no_ec2_codes(aws: tuple[FaultProxy, boto3.session.Session], proxy: FaultProxy) -> None:
    assert aws_quotas(client(aws, "service-quotas")) == []
    assert proxy.seen.count("GetServiceQuota") == len(AWS_GPU_QUOTAS)


def test_service_quota_read_through_moto(aws: tuple[FaultProxy, boto3.session.Session]) -> None:
    # moto's one real quota family: VPCs per Region (L-F678F1CE), default 5.
    limits = aws_quotas(
        client(aws, "service-quotas"), {"L-F678F1CE": ("vpc", Market.ON_DEMAND)}, service_code="vpc", unit="VPC"
    )

    assert limits == [QuotaLimit("aws", AWS_REGION, "vpc", Market.ON_DEMAND, 5.0, "VPC", "L-F678F1CE")]


def service_quota_json(code: str, name: str, value: float) -> str:
    return json.dumps(
        {
            "Quota": {
                "ServiceCode": "ec2",
                "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                "QuotaArn": f"arn:aws:servicequotas:{AWS_REGION}:123456789012:ec2/{code}",
                "QuotaCode": code,
                "QuotaName": name,
                "Value": value,
                "Unit": "None",
                "Adjustable": True,
                "GlobalQuota": False,
                "QuotaAppliedAtLevel": "ACCOUNT",
            }
        }
    )


@pytest.mark.parametrize(
    ("code", "name", "market"),
    [
        ("L-417A185B", "Running On-Demand P instances", Market.ON_DEMAND),
        ("L-7212CCBC", "All P Spot Instance Requests", Market.SPOT),
    ],
)
def test_ec2_gpu_quota(
    aws: tuple[FaultProxy, boto3.session.Session], proxy: FaultProxy, code: str, name: str, market: Market
) -> None:
    proxy.answer("GetServiceQuota", Answer(200, service_quota_json(code, name, 384.0), "application/x-amz-json-1.1"))

    limits = aws_quotas(client(aws, "service-quotas"), {code: AWS_GPU_QUOTAS[code]})

    assert limits == [QuotaLimit("aws", AWS_REGION, "P", market, 384.0, "vCPU", code)]


# Shapes and prices of real Compute Engine SKUs (us-central1, late 2024).
def sku(description: str, usage_type: str, unit: str, units: int, nanos: int, group: str = "CPU") -> dict:
    return {
        "name": f"services/6F81-5844-456A/skus/{abs(hash(description)) % 10**12:012d}",
        "skuId": f"{abs(hash(description)) % 10**4:04X}-0000-0000",
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": "Compute",
            "resourceGroup": group,
            "usageType": usage_type,
        },
        "serviceRegions": ["us-central1"],
        "pricingInfo": [
            {
                "effectiveTime": "2026-11-20T08:00:00.000Z",
                "pricingExpression": {
                    "usageUnit": unit,
                    "displayQuantity": 1,
                    "tieredRates": [
                        {
                            "startUsageAmount": 0,
                            "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos},
                        }
                    ],
                },
                "currencyConversionRate": 1,
            }
        ],
        "serviceProviderName": "Google",
    }


SKUS = [
    sku("A2 Instance Core running in Americas", "OnDemand", "h", 0, 31611000),
    sku("A2 Instance Ram running in Americas", "OnDemand", "GiBy.h", 0, 4237000, "RAM"),
    sku("Nvidia Tesla A100 GPU running in Americas", "OnDemand", "h", 2, 933908000, "GPU"),
    sku("Spot Preemptible A2 Instance Core running in Americas", "Preemptible", "h", 0, 11500000),
    sku("Spot Preemptible A2 Instance Ram running in Americas", "Preemptible", "GiBy.h", 0, 1541000, "RAM"),
    sku("Spot Preemptible Nvidia Tesla A100 GPU running in Americas", "Preemptible", "h", 1, 173500000, "GPU"),
    # No spot "Nvidia A100 80GB" SKU: a2-ultragpu-1g gets no quote.
    sku("Commitment v1: A2 Cpu in Americas for 1 Year", "Commit1Yr", "h", 0, 19915000),
]
MACHINE_TYPES = {
    "a2-highgpu-1g": GcpMachineShape(family="A2", vcpus=12, memory_gib=85, gpu="Nvidia Tesla A100", gpus=1),
    "a2-ultragpu-1g": GcpMachineShape(family="A2", vcpus=12, memory_gib=170, gpu="Nvidia A100 80GB", gpus=1),
}
ZONES = {"us-central1": ["us-central1-a", "us-central1-f"]}


@pytest.fixture(scope="module")
def google() -> Iterator[FakeComputeApi]:
    quotas = [
        {"metric": "CPUS", "limit": 2400.0, "usage": 96.0},
        {"metric": "NVIDIA_A100_GPUS", "limit": 16.0, "usage": 4.0},
        {"metric": "PREEMPTIBLE_NVIDIA_A100_GPUS", "limit": 64.0, "usage": 0.0},
        {"metric": "NVIDIA_A100_80GB_GPUS", "limit": 8.0, "usage": 0.0},
        {"metric": "COMMITTED_NVIDIA_A100_GPUS", "limit": 0.0, "usage": 0.0},
    ]
    fake = FakeComputeApi(
        "meridian-test", {"us-central1": ["us-central1-a", "us-central1-f"]}, {"us-central1": quotas}, skus=SKUS
    ).start()
    try:
        yield fake
    finally:
        fake.stop()


def test_billing_skus_are_read_page_by_page(google: FakeComputeApi) -> None:
    skus = fetch_billing_skus(google.endpoint)

    assert [s["description"] for s in skus] == [s["description"] for s in SKUS]
    assert len(SKUS) > google.sku_page_size


def test_gcp_spot_quotes_from_the_billing_catalog(google: FakeComputeApi) -> None:
    quotes = gcp_spot_quotes(fetch_billing_skus(google.endpoint), MACHINE_TYPES, ZONES)

    # 12 vCPU x 0.0115 + 85 GiB x 0.001541 + 1 A100 x 1.1735 = 1.442485 USD/h, in each zone
    assert [(q.cloud, q.region, q.zone, q.instance_type) for q in quotes] == [
        ("gcp", "us-central1", "us-central1-a", "a2-highgpu-1g"),
        ("gcp", "us-central1", "us-central1-f", "a2-highgpu-1g"),
    ]
    assert [q.usd_per_h for q in quotes] == [pytest.approx(1.442485)] * 2
    assert {q.at_s for q in quotes} == {datetime(2026, 11, 20, 8, tzinfo=UTC).timestamp()}


def test_quotes_apply_to_the_catalog(aws: tuple[FaultProxy, boto3.session.Session], google: FakeComputeApi) -> None:
    catalog = default_catalog()
    aws_quotes = aws_spot_quotes(client(aws, "ec2"), ["p4d.24xlarge"])
    gcp_quotes = gcp_spot_quotes(fetch_billing_skus(google.endpoint), MACHINE_TYPES, ZONES)

    assert catalog.apply_spot_quotes(aws_quotes + gcp_quotes) == []

    for quote in aws_quotes + gcp_quotes:
        offering = catalog.find(quote.cloud, quote.region, quote.zone, quote.instance_type)
        assert offering is not None and offering.spot is not None
        assert (offering.spot.usd_per_h, offering.spot.refreshed_at_s) == (quote.usd_per_h, quote.at_s)


def test_gcp_regional_gpu_quotas(google: FakeComputeApi) -> None:
    regions = compute_v1.RegionsClient(
        credentials=AnonymousCredentials(), client_options={"api_endpoint": google.endpoint}
    )

    limits = gcp_quotas(regions, "meridian-test", "us-central1")

    assert limits == [
        QuotaLimit("gcp", "us-central1", "A100", Market.ON_DEMAND, 16.0, "GPU", "NVIDIA_A100_GPUS", 4.0),
        QuotaLimit("gcp", "us-central1", "A100", Market.SPOT, 64.0, "GPU", "PREEMPTIBLE_NVIDIA_A100_GPUS", 0.0),
        QuotaLimit("gcp", "us-central1", "A100-80GB", Market.ON_DEMAND, 8.0, "GPU", "NVIDIA_A100_80GB_GPUS", 0.0),
    ]
