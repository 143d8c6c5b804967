"""Cohorts: manifests, NIfTI loading, the phantom, splits and batched 3D views."""
