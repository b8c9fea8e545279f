"""Causal tests of what probes decode: steering along a probe direction, ablating units,
and patching recurrent states through time."""
