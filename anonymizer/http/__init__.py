"""The HTTP layer: the app factory, thin resources, request inputs and access control."""
