"""The price catalog: the extract's GCP join, cheapest-by-region, spot quotes; the capacity spec."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from capacity.catalog import PACKAGED_DIR, CatalogError, SpotQuote, default_catalog, load_catalog
from capacity.model import Market, Placement
from meridian_core.capacity_spec import CapacitySpec

SHARED_CATALOG = Path(__file__).resolve().parents[3] / "shared" / "data" / "catalog"


@pytest.fixture(scope="module")
def catalog():
    return default_catalog()


def test_gcp_host_row_is_joined_with_its_accelerator_row(catalog) -> None:
    a2 = catalog.find("gcp", "us-central1", "us-central1-a", "a2-highgpu-1g")
    assert a2 is not None
    assert a2.on_demand.usd_per_h == pytest.approx(0.73948 + 2.93391)
    assert a2.spot.usd_per_h == pytest.approx(0.29576 + 1.1472)
    assert (a2.accelerator.name, a2.accelerator.count, a2.accelerator.memory_gib) == ("A100", 1, 40)
    h100 = catalog.find("gcp", "us-central1", "us-central1-a", "a3-highgpu-8g")
    assert h100.accelerator.count == 8
    assert h100.on_demand.usd_per_h == pytest.approx(9.46006 + 8 * 4.57009, rel=1e-4)


def test_aws_rows_keep_az_ids_and_list_prices(catalog) -> None:
    g5 = catalog.offerings(accelerator="A10G", accelerator_count=1, cloud="aws", region="ap-northeast-1")
    assert len(g5) == 1
    assert g5[0].zone == "apne1-az1"
    assert g5[0].on_demand.usd_per_h == 1.459
    assert g5[0].on_demand.refreshed_at_s is None  # a snapshot: its date is not recorded
    assert "27f67dd4" in g5[0].on_demand.source
    # p5e.48xlarge has no on-demand price in the source; the row stays, unpriced.
    assert all(o.on_demand is None for o in catalog.offerings(accelerator="H200") if o.instance_type == "p5e.48xlarge")


def test_cheapest_by_region_gives_one_offering_per_region_cheapest_first(catalog) -> None:
    rows = catalog.cheapest_by_region(Market.SPOT, accelerator="a100")
    regions = [(o.cloud, o.region) for o in rows]
    assert len(regions) == len(set(regions))
    prices = [o.spot.usd_per_h for o in rows]
    assert prices == sorted(prices)
    every = [o for o in catalog.offerings(accelerator="A100") if o.spot is not None]
    assert prices[0] == min(o.spot.usd_per_h for o in every)
    for row in rows:
        same_region = [o.spot.usd_per_h for o in every if (o.cloud, o.region) == (row.cloud, row.region)]
        assert row.spot.usd_per_h == min(same_region)


def test_spot_quote_updates_price_and_refresh_time() -> None:
    catalog = default_catalog()
    quote = SpotQuote("aws", "us-east-1", "use1-az1", "g5.xlarge", 0.4321, at_s=1_700_000_000.0)
    before = catalog.find("aws", "us-east-1", "use1-az1", "g5.xlarge")
    assert before is not None and before.spot.usd_per_h != 0.4321
    assert catalog.apply_spot_quotes([quote]) == []
    after = catalog.find("aws", "us-east-1", "use1-az1", "g5.xlarge")
    assert after.spot.usd_per_h == 0.4321
    assert after.spot.refreshed_at_s == 1_700_000_000.0
    assert after.on_demand == before.on_demand  # on-demand untouched, still the snapshot
    # An older quote does not overwrite a newer one.
    catalog.apply_spot_quotes([SpotQuote("aws", "us-east-1", "use1-az1", "g5.xlarge", 9.0, at_s=1.0)])
    assert catalog.find("aws", "us-east-1", "use1-az1", "g5.xlarge").spot.usd_per_h == 0.4321


def test_spot_quote_for_a_new_zone_adds_it_and_unknown_types_are_returned() -> None:
    catalog = default_catalog()
    size = len(catalog)
    new_zone = SpotQuote("aws", "us-east-1", "us-east-1b", "g5.xlarge", 0.5, at_s=10.0)
    unknown = SpotQuote("aws", "us-east-1", "us-east-1b", "z9.huge", 0.5, at_s=10.0)
    assert catalog.apply_spot_quotes([new_zone, unknown]) == [unknown]
    assert len(catalog) == size + 1
    added = catalog.find("aws", "us-east-1", "us-east-1b", "g5.xlarge")
    assert added.spot.usd_per_h == 0.5
    assert added.on_demand.usd_per_h == catalog.find("aws", "us-east-1", "use1-az1", "g5.xlarge").on_demand.usd_per_h
    assert catalog.price(Placement("aws", "us-east-1", "us-east-1b", "g5.xlarge", Market.SPOT)) == 0.5


def test_bad_catalog_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text(
        "cloud,instance_type,accelerator,accelerator_count,vcpus,memory_gib,region,zone,"
        "price_per_hour_usd,spot_price_per_hour_usd\naws,g5.xlarge,A10G,one,4,16,us-east-1,use1-az1,1.0,0.5\n"
    )
    with pytest.raises(CatalogError, match="prices.csv:2"):
        load_catalog([bad])


def test_packaged_extract_is_the_shared_one() -> None:
    if not SHARED_CATALOG.is_dir():
        pytest.skip("shared/data/catalog not present")
    for name in ("gpu_prices_aws.csv", "gpu_prices_gcp.csv"):
        assert (PACKAGED_DIR / name).read_bytes() == (SHARED_CATALOG / name).read_bytes()


def test_capacity_spec_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="on_demand_base"):
        CapacitySpec(on_demand_base=-1)
    with pytest.raises(ValidationError, match="limit"):
        CapacitySpec(quotas=[{"cloud": "aws", "region": "us-east-1", "accelerator": "A100", "limit": -2}])
    with pytest.raises(ValidationError, match="listed twice"):
        CapacitySpec(
            quotas=[
                {"cloud": "aws", "region": "us-east-1", "accelerator": "A100", "limit": 2},
                {"cloud": "aws", "region": "us-east-1", "accelerator": "a100", "limit": 3},
            ]
        )
    with pytest.raises(ValidationError, match="spot_spar"):
        CapacitySpec(spot_spar=1)
    spec = CapacitySpec(quotas=[{"cloud": "gcp", "region": "us-central1", "accelerator": "L4", "limit": 8}])
    assert spec.quota("gcp", "us-central1", "l4") == 8
    assert spec.quota("gcp", "us-east1", "L4") is None
