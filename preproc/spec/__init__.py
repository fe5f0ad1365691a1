"""The pipeline spec: YAML to validated, frozen objects, with errors naming the key."""
