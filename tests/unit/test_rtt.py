import csv

import pytest

from geo_router.geo import LatLon, haversine_km
from geo_router.rtt import RTT_INTERCEPT_MS, RTT_MS_PER_KM, fit_line, prior_rtt_ms

from ..conftest import REPO

DATA = REPO.parent / "shared" / "data"


def test_fit_line_recovers_a_line():
    intercept, slope, r2 = fit_line([(0, 1), (1, 3), (2, 5), (3, 7)])
    assert (intercept, slope, r2) == pytest.approx((1, 2, 1))


def test_prior_grows_with_distance():
    assert prior_rtt_ms(0) == RTT_INTERCEPT_MS
    assert prior_rtt_ms(5460) == pytest.approx(109.6, abs=0.5)  # Ashburn-Dublin; measured avg ~70-80 ms


@pytest.mark.skipif(not DATA.exists(), reason="shared/data is not beside the repository")
def test_documented_fit_matches_the_rtt_grid():
    coords = {
        f"{row['cloud']}:{row['region']}": LatLon(float(row["lat"]), float(row["lon"]))
        for row in csv.DictReader(open(DATA / "regions" / "regions.csv"))
    }

    def region(name: str) -> str:
        cloud, place = name.split(":", 1)
        return f"{cloud}:{place.rsplit('-', 1)[0]}" if cloud == "gcp" else name  # gcp names carry a zone

    points = []
    for row in csv.DictReader(open(DATA / "network" / "skyplane_latency_2022.csv")):
        a, b = region(row["src_region"]), region(row["dst_region"])
        if row["src_tier"] == row["dst_tier"] == "PREMIUM" and a in coords and b in coords and a != b:
            points.append((haversine_km(coords[a], coords[b]), float(row["avg_rtt"])))
    assert len(points) == 2256
    intercept, slope, r2 = fit_line(points)
    assert intercept == pytest.approx(RTT_INTERCEPT_MS, abs=0.01)
    assert slope == pytest.approx(RTT_MS_PER_KM, abs=1e-5)
    assert r2 == pytest.approx(0.685, abs=0.001)
