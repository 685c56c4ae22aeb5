"""The geo-aware OpenAI-compatible router in front of every region, its pure scorer and
the routing simulator.

It may import `meridian_core` only.
"""
