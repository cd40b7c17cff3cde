"""Distributed Beam engines: the config-to-args translation and a local Flink cluster."""
