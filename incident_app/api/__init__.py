"""HTTP layer: thin views that parse with schemas, call the service and dump with schemas."""
