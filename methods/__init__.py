"""SSL method plugins, one module each; every module here is imported and registered."""
