"""The global loop's floors: demand a region cannot get capacity for moves to its
fallbacks, and the fleet keeps its warm minimum where demand was."""

from autoscaler.policy.fleet_floors import RegionView, fleet_floors

EAST, WEST, ASIA = "aws/us-east-1", "gcp/europe-west1", "gcp/asia-east1"


def views(east=(2, 4, 50), west=(1, 4, 10), asia=(0, 2, 0)) -> list[RegionView]:
    return [RegionView(EAST, *east), RegionView(WEST, *west), RegionView(ASIA, *asia)]


def test_nothing_to_do_means_no_floors():
    assert fleet_floors(views(), {}, {}, min_warm_replicas=1) == {}


def test_a_shortfall_moves_to_the_fallbacks_in_order_within_their_room():
    floors = fleet_floors(views(west=(3, 4, 10)), {EAST: 3}, {EAST: [WEST, ASIA]}, min_warm_replicas=0)
    assert floors[WEST].replicas == 4  # its own 3 plus the 1 it has room for
    assert floors[ASIA].replicas == 2  # the other 2
    assert EAST in floors[WEST].reason and "capacity" in floors[WEST].reason


def test_a_shortfall_with_nowhere_to_go_raises_nothing():
    full = views(west=(4, 4, 10), asia=(2, 2, 0))
    assert fleet_floors(full, {EAST: 2}, {EAST: [WEST, ASIA]}, min_warm_replicas=0) == {}


def test_the_warm_minimum_goes_where_demand_was():
    idle = views(east=(0, 4, 3), west=(0, 4, 40), asia=(0, 2, 0))
    floors = fleet_floors(idle, {}, {}, min_warm_replicas=1)
    assert list(floors) == [WEST] and floors[WEST].replicas == 1 and "fleet minimum" in floors[WEST].reason
    floors = fleet_floors(idle, {}, {}, min_warm_replicas=6)
    assert {name: f.replicas for name, f in floors.items()} == {WEST: 4, EAST: 2}


def test_replicas_already_wanted_count_towards_the_minimum():
    assert fleet_floors(views(east=(1, 4, 0), west=(0, 4, 0)), {}, {}, min_warm_replicas=1) == {}
