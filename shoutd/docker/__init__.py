"""Adapters to Docker: the plugin API it calls, and the engine API we call."""
