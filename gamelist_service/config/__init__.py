"""Configuration: YAML with positions, the JSON Schema, validation, the typed settings, reload."""
