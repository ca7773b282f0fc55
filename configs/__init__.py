"""The configs shipped with the package (YAML files beside this one; core.config.config_path finds
them by name). A package only so that an installed copy carries them as package data."""
