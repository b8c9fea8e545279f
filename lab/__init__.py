"""The lab's run plumbing, shared by every stage (tasks, models, probes, analysis, studies):
typed configs loaded from TOML with overrides, random streams, devices, run directories and
atomic file writes. It imports no stage."""
