"""Test infrastructure: emulated clouds reached through the real SDKs (aws: moto behind a
fault-injecting proxy, for boto3; gcp: a local Compute Engine endpoint, for
google-cloud-compute), plus the instance runner that runs launched instances' real boot
scripts as local Ray nodes. Never imported by product code."""
