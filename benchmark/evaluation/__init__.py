"""Evaluation protocols (fine-tuning, linear and kNN probes), scoring, metrics, localisation."""
