import csv

import pytest

from meridian_core.geo import LatLon, haversine_km
from meridian_core.rtt import fit_line, prior_rtt_ms

from ..conftest import REPO

DATA = REPO.parent / "shared" / "data"


def test_fit_line_recovers_a_line():
    intercept, slope, r2 = fit_line([(0, 1), (1, 3), (2, 5), (3, 7)])
    assert (intercept, slope, r2) == pytest.approx((1, 2, 1))


# The published fit (README "Region choice"): 28.0 ms + 0.01495 ms/km, worked out by hand.
# The README gives the intercept to 0.1 ms (the fit's 27.99 rounds to 28.0), hence ±0.05 ms;
# at 15,000 km that still catches a slope off by 5e-6 ms/km.
@pytest.mark.parametrize(
    "km, ms",
    [
        (0, 28.0),
        (5460, 109.63),  # Ashburn-Dublin, the two local regions: 28.0 + 81.627 (measured avg ~70-80 ms)
        (5570, 111.27),  # New York-London: 28.0 + 83.2715
        (15000, 252.25),  # 28.0 + 224.25
    ],
)
def test_prior_is_the_published_fit(km, ms):
    assert prior_rtt_ms(km) == pytest.approx(ms, abs=0.05)


def test_prior_for_new_york_to_london():
    # Great circle New York (40.71 N, 74.01 W) - London (51.51 N, 0.13 W): 5,570 km.
    km = haversine_km(LatLon(40.71, -74.01), LatLon(51.51, -0.13))
    assert km == pytest.approx(5570, abs=10)
    # 28.0 + 0.01495 × 5570 = 111.27 ms; ±0.2 ms covers ±10 km (±0.15 ms) and the rounded intercept.
    assert prior_rtt_ms(km) == pytest.approx(111.27, abs=0.2)


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
    # The figures rtt.py's docstring publishes (27.99 + 0.01495 × km), not its constants.
    assert intercept == pytest.approx(27.99, abs=0.01)
    assert slope == pytest.approx(0.01495, abs=1e-5)
    assert r2 == pytest.approx(0.685, abs=0.001)
