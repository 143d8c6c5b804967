"""Pretraining: units and their fingerprints, the Lightning runtime, the pretraining loop."""
