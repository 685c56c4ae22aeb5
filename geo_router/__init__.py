"""The geo-aware OpenAI-compatible router in front of every region."""
