"""The `capacity:` section of the platform spec: quotas, market mix, fallbacks, timings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Quota(BaseModel):
    """The account's limit on accelerators of one kind in one cloud region (the cloud's own quota)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str = Field(min_length=1)
    region: str = Field(min_length=1)
    accelerator: str = Field(min_length=1)  # e.g. "A100"; compared case-insensitively
    limit: int = Field(ge=0)  # accelerators (GPUs), counted over pending, running and draining nodes


class FallbackTarget(BaseModel):
    """A place demand may move to when its own region is exhausted; `region: null` means any region of the cloud."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str = Field(min_length=1)
    region: str | None = None


class CapacitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quotas: list[Quota] = Field(default_factory=list)
    # Price catalogs read beside the packaged GPU extract, in its CSV schema
    # (capacity/data/README.md): CPU instance types, or the prices your account gets.
    # A relative path is from the spec file's folder.
    catalog_files: list[str] = Field(default_factory=list, max_length=16)
    # On-demand nodes each region keeps whatever spot does; the rest is spot when spot is enabled.
    on_demand_base: int = Field(default=0, ge=0)
    spot_enabled: bool = True
    # The most spot nodes held beyond demand. How many are held follows the demand's zones:
    # none once they have been calm for `hedge_calm_s`, else the most nodes lost within any
    # `hedge_burst_s` (zones failing together) among the preemptions of `event_memory_s`.
    spot_spare: int = Field(default=2, ge=0)
    hedge_burst_s: float = Field(default=600.0, gt=0)
    hedge_calm_s: float = Field(default=3600.0, gt=0)
    # Where demand may go, in order of preference, when its region cannot take it.
    fallback: list[FallbackTarget] = Field(default_factory=list)
    # Treat the fallback regions as equal to the home region when spreading (a service that
    # does not care where its replicas run, such as one global endpoint); off: home first.
    spread_regions: bool = False
    # A zone that stocked out (or preempted us) is skipped for this long, doubled for
    # every further stockout inside `event_memory_s`, up to `stockout_backoff_max_s`.
    stockout_backoff_s: float = Field(default=300.0, gt=0)
    stockout_backoff_max_s: float = Field(default=3600.0, gt=0)
    event_memory_s: float = Field(default=3600.0, gt=0)
    # A bought node missing from its region's Ray cluster this long, counted from when
    # the capacity loop first listed it or last found it there (its boot failed, or Ray
    # on it died), is released and bought again.
    join_timeout_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> CapacitySpec:
        if self.stockout_backoff_max_s < self.stockout_backoff_s:
            raise ValueError("stockout_backoff_max_s must be at least stockout_backoff_s")
        if self.hedge_calm_s > self.event_memory_s:
            raise ValueError("hedge_calm_s must be at most event_memory_s (older preemptions are forgotten)")
        seen: set[tuple[str, str, str]] = set()
        for quota in self.quotas:
            key = (quota.cloud, quota.region, quota.accelerator.lower())
            if key in seen:
                raise ValueError(f"quotas: {quota.cloud}/{quota.region}/{quota.accelerator} is listed twice")
            seen.add(key)
        return self

    def quota(self, cloud: str, region: str, accelerator: str) -> int | None:
        """The accelerator limit for that cloud region, or None when the spec sets none."""
        wanted = accelerator.lower()
        return next(
            (q.limit for q in self.quotas if (q.cloud, q.region, q.accelerator.lower()) == (cloud, region, wanted)),
            None,
        )
