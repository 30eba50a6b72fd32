"""TrustFleet package."""
