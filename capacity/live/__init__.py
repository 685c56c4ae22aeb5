"""Capacity in the running platform: the local, AWS (boto3) and GCP
(google-cloud-compute) providers, price and quota lookups, the capacity loop that runs
placement every few seconds, and the ledger behind `meridian capacity report`. It may
import `capacity.policy`, the package's vocabulary, `autoscaler`, `meridian_host` and
`meridian_core`."""
