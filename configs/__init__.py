"""YAML settings: defaults.yaml, profiles/<name>.yaml and methods/<name>.yaml."""
