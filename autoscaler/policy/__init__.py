"""The autoscaler's policies, pure: a region's signals and state in, a replica target and
its reason out, planned with the replica performance model; and the fleet's warm floors
across regions. It imports `meridian_core` only."""
