import pytest

from geo_router.live.locate import ClientLocator, client_ip, open_geoip
from geo_router.live.requests import InvalidRequest
from meridian_core.geo import LatLon

from ..conftest import REPO

GEOIP2 = REPO / "tests" / "fixtures" / "geoip" / "GeoIP2-City-Test.mmdb"
DEFAULT = LatLon(39.04, -77.49)
LONDON_IP, MILTON_IP, SINGAPORE_IP, UNKNOWN_IP = "81.2.69.142", "216.160.83.56", "214.0.0.1", "1.1.1.1"


@pytest.fixture(scope="module")
def geoip():
    return open_geoip(GEOIP2)


def locator(geoip=None, hops=0, order=("header", "cdn", "geoip")):
    return ClientLocator(list(order), DEFAULT, geoip=geoip, trusted_proxy_hops=hops)


def test_explicit_header_wins_over_everything(geoip):
    found = locator(geoip).locate(
        {"x-client-location": "48.85,2.35", "cf-iplatitude": "1", "cf-iplongitude": "2"}, LONDON_IP
    )
    assert (found.location, found.source) == (LatLon(48.85, 2.35), "header")


def test_malformed_header_is_the_callers_error():
    with pytest.raises(InvalidRequest, match="X-Client-Location"):
        locator().locate({"x-client-location": "somewhere"}, None)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"cloudfront-viewer-latitude": "51.5", "cloudfront-viewer-longitude": "-0.12"}, LatLon(51.5, -0.12)),
        ({"cf-iplatitude": "35.68", "cf-iplongitude": "139.75"}, LatLon(35.68, 139.75)),
    ],
)
def test_cdn_headers(headers, expected):
    found = locator().locate(headers, None)
    assert (found.location, found.source) == (expected, "cdn")


def test_half_or_bad_cdn_headers_are_ignored():
    assert locator().locate({"cf-iplatitude": "35.68"}, None).source == "default"
    assert locator().locate({"cf-iplatitude": "95", "cf-iplongitude": "1"}, None).source == "default"


@pytest.mark.parametrize(
    "ip, lat, lon", [(LONDON_IP, 51.5142, -0.0931), (MILTON_IP, 47.2513, -122.3149), (SINGAPORE_IP, 1.336, 103.7716)]
)
def test_geoip_of_the_peer(geoip, ip, lat, lon):
    found = locator(geoip).locate({}, ip)
    assert found.source == "geoip"
    assert found.location == pytest.approx(LatLon(lat, lon))


def test_geoip_misses_fall_back_to_default(geoip):
    assert locator(geoip).locate({}, UNKNOWN_IP).source == "default"
    assert locator(geoip).locate({}, "127.0.0.1").source == "default"  # not a public address
    assert locator(geoip).locate({}, None).source == "default"
    assert locator().locate({}, LONDON_IP).source == "default"  # no database configured


def test_forwarded_for_is_trusted_only_up_to_our_hops(geoip):
    # The client forged a first entry; our one proxy appended the real peer address.
    headers = {"x-forwarded-for": f"{SINGAPORE_IP}, {LONDON_IP}"}
    assert client_ip(headers, "10.0.0.5", trusted_proxy_hops=1) == LONDON_IP
    assert locator(geoip, hops=1).locate(headers, "10.0.0.5").location.lat == pytest.approx(51.5142)
    # With no trusted proxies the header is ignored and the peer is used.
    assert client_ip(headers, MILTON_IP, trusted_proxy_hops=0) == MILTON_IP
    # Two hops expected but only one entry: the request bypassed a proxy; trust nothing.
    assert client_ip({"x-forwarded-for": LONDON_IP}, "10.0.0.5", trusted_proxy_hops=2) is None


def test_order_is_configurable(geoip):
    headers = {"cf-iplatitude": "35.68", "cf-iplongitude": "139.75"}
    assert locator(geoip, order=("geoip", "cdn")).locate(headers, LONDON_IP).source == "geoip"
    assert locator(geoip, order=("cdn", "geoip")).locate(headers, LONDON_IP).source == "cdn"
