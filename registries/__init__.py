"""Registry modules: module-level factories whose names are the keys used in configs."""
