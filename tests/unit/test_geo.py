import pytest

from meridian_core.geo import LatLon, haversine_km, parse_lat_lon

ASHBURN = LatLon(39.04, -77.49)
DUBLIN = LatLon(53.35, -6.26)
PARIS = LatLon(48.85, 2.35)
LONDON = LatLon(51.51, -0.13)
SAN_FRANCISCO = LatLon(37.77, -122.42)


def test_haversine_known_distances():
    assert haversine_km(LONDON, PARIS) == pytest.approx(344, abs=5)
    assert haversine_km(ASHBURN, DUBLIN) == pytest.approx(5460, rel=0.02)
    assert haversine_km(PARIS, PARIS) == 0


@pytest.mark.parametrize("text", ["48.85", "a,b", "91,0", "0,181", "nan,0", "1,2,3", ""])
def test_parse_lat_lon_rejects(text):
    with pytest.raises(ValueError):
        parse_lat_lon(text)


def test_parse_lat_lon_accepts_spaces():
    assert parse_lat_lon(" 48.85 , 2.35 ") == PARIS
