"""Mechanisms every layer shares, one copy each: signal deferral, RNG capture, device sync, unit constants."""
